"""The operator tools with lanes (``KAFCEL_TOPICS``): ``status``, the ``dlq`` commands,
range ``replay`` and the dashboard read every lane, and a dead letter goes back to the
lane it came from. Real Apache Kafka, Redis, lane bridge and Celery worker."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import Producer as KafkaProducer

from kafcel import Producer
from kafcel.dev import DevStack
from kafcel.dev.procs import ManagedProcess, bridge_argv
from kafcel.errors import ConfigError
from kafcel.kafka.admin import end_offsets, ensure_topics, partitions_of
from kafcel.ops.deadletters import DeadLetterRecord, parse_ref, replay_target, resolve_ref
from kafcel.protocol.deadletter import DeadLetter
from kafcel.protocol.headers import REPLAY_OF
from kafcel.settings import Settings

from .conftest import ROOT, TEST_APP, base_env, wait_until
from .test_cli import kafcel
from .test_dashboard import CHROMIUM, start_dashboard

pytestmark = pytest.mark.timeout(240)

Ledger = tuple[str, "redis.Redis[bytes]"]
COMPANIONS = ("", ".results", ".dlq", ".scheduled")


@dataclass
class Lanes:
    """One test's two lanes (task topics ``a`` and ``b``, each with its companions),
    its consumer group, and the bridges it started."""

    stack: DevStack
    logs_dir: Path
    run: str
    bridges: list[ManagedProcess] = field(default_factory=list)

    @property
    def a(self) -> str:
        return f"la-{self.run}"

    @property
    def b(self) -> str:
        return f"lb-{self.run}"

    @property
    def bootstrap(self) -> str:
        return self.stack.bootstrap_servers

    def env(self, **extra: str) -> dict[str, str]:
        # Not Settings.as_env(): it would set each companion topic, which lanes share then.
        return {
            **base_env(self.stack),
            "KAFCEL_TOPICS": f"{self.a},{self.b}",
            "KAFCEL_GROUP_ID": f"g-{self.run}",
            "KAFCEL_PARTITIONS": "2",
            "KAFCEL_SESSION_TIMEOUT_S": "6",
            "KAFCEL_COMMIT_INTERVAL_S": "0.5",
            **extra,
        }

    def start_bridge(self, **extra: str) -> ManagedProcess:
        proc = ManagedProcess(
            name=f"lanes bridge {len(self.bridges)}",
            argv=bridge_argv(TEST_APP),
            env=self.env(**extra),
            log_path=self.logs_dir / f"lanes-{self.run}-bridge{len(self.bridges)}.log",
            cwd=ROOT,
        ).start()
        self.bridges.append(proc)
        proc.wait_for_log("kafcel bridge ready", timeout_s=60)
        return proc

    def submit(self, topic: str, task: str, *args: Any, key: str) -> str:
        settings = Settings(bootstrap_servers=self.bootstrap, topic=topic)
        with Producer(settings=settings) as producer:
            return producer.submit(task, args=list(args), key=key)

    def produce(
        self, topic: str, value: bytes, *, key: bytes, headers: list[Any] | None = None
    ) -> None:
        raw = KafkaProducer({"bootstrap.servers": self.bootstrap})
        raw.produce(topic, value, key=key, headers=headers or [])
        assert raw.flush(10) == 0


@pytest.fixture()
def lanes(stack: DevStack, logs_dir: Path) -> Iterator[Lanes]:
    lanes = Lanes(stack=stack, logs_dir=logs_dir, run=uuid.uuid4().hex[:8])
    ensure_topics(
        lanes.bootstrap, {topic + tail: 2 for topic in (lanes.a, lanes.b) for tail in COMPANIONS}
    )
    try:
        yield lanes
    finally:
        for proc in lanes.bridges:
            proc.stop(timeout_s=30)


def records_of(bootstrap: str, topic: str) -> list[Message]:
    """Every record ``topic`` holds now."""
    ends = end_offsets(bootstrap, [(topic, p) for p in partitions_of(bootstrap, topic)])
    left = {p for (_, p), end in ends.items() if end > 0}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(left)])
    got: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while left:
            assert time.monotonic() < deadline, f"timed out reading {topic}"
            for msg in consumer.consume(500, timeout=0.2):
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                err = msg.error()
                if err is None:
                    got.append(msg)
                    offset += 1
                elif err.code() != RdKafkaError._PARTITION_EOF:
                    continue
                if offset >= ends[(topic, partition)]:
                    left.discard(partition)
        return got
    finally:
        consumer.close()


def replay_sources(bootstrap: str, topic: str) -> list[str]:
    """Where the replayed copies in ``topic`` came from (their ``kafcel-replay-of``)."""
    heads = [dict(m.headers() or []) for m in records_of(bootstrap, topic)]
    return sorted(h[REPLAY_OF].decode() for h in heads if REPLAY_OF in h)


# What Kafka answers while the group's coordinator is still loading (a fresh broker): a
# committed-offsets read fails until it is done.
_COORDINATOR_LOADING = ("Not coordinator", "Coordinator load in progress")


def status(env: dict[str, str], *extra: str) -> tuple[int, dict[str, Any]]:
    def read() -> Any:
        out = kafcel("status", "--json", *extra, env=env)
        if out.returncode == 1 and any(text in out.stderr for text in _COORDINATOR_LOADING):
            return None
        assert out.returncode in (0, 2), out.stderr
        return out

    out = wait_until(read, 60, "Kafka's group coordinator to answer")
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


def dlq_records(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = kafcel("dlq", "list", "--json", "--limit", "0", *args, env=env)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def dlq_records_if(env: dict[str, str], count: int) -> list[dict[str, Any]] | None:
    got = dlq_records(env)
    return got if len(got) == count else None


def one_line_error(out: Any, *needles: str) -> None:
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


# -- refs and replay targets, without the stack ---------------------------------------


def test_refs_name_their_dlq_topic_when_there_are_several() -> None:
    assert parse_ref("3:120") == (None, 3, 120)
    assert parse_ref("orders.dlq:3:120") == ("orders.dlq", 3, 120)
    for bad in ("3", "x:1", ":1:2", "a.dlq:1:"):
        with pytest.raises(ConfigError, match="PARTITION:OFFSET"):
            parse_ref(bad)
    assert resolve_ref("3:120", ["a.dlq"]) == ("a.dlq", 3, 120)
    assert resolve_ref("b.dlq:0:7", ["a.dlq", "b.dlq"]) == ("b.dlq", 0, 7)
    with pytest.raises(ConfigError, match=r"3:120 is ambiguous.*a\.dlq, b\.dlq"):
        resolve_ref("3:120", ["a.dlq", "b.dlq"])
    with pytest.raises(ConfigError, match=r"'c\.dlq' is not a DLQ topic read here"):
        resolve_ref("c.dlq:0:1", ["a.dlq", "b.dlq"])


def _letter(dlq_topic: str, origin: str | None) -> DeadLetterRecord:
    meta = {} if origin is None else {"origin.topic": origin}
    return DeadLetterRecord(
        topic=dlq_topic,
        partition=0,
        offset=0,
        timestamp=None,
        key=None,
        key_bytes=None,
        value=b"{}",
        headers=[],
        meta=meta,
    )


def test_a_dead_letter_goes_back_to_the_lane_it_came_from() -> None:
    own = Settings(topics=("a", "b"))
    lanes = [own.lane(t, weights={"a": 1, "b": 1}) for t in ("a", "b")]
    assert replay_target(_letter("b.dlq", "b"), lanes) == "b"
    # No origin header: the lane whose own DLQ it is in.
    assert replay_target(_letter("a.dlq", None), lanes) == "a"
    shared = Settings(topics=("a", "b"), dlq_topic="all.dlq")
    lanes = [shared.lane(t, weights={"a": 1, "b": 1}) for t in ("a", "b")]
    assert replay_target(_letter("all.dlq", "a"), lanes) == "a"
    # A shared DLQ and an origin that is no lane: nowhere to send it.
    assert replay_target(_letter("all.dlq", "gone"), lanes) is None
    assert replay_target(_letter("all.dlq", None), lanes) is None
    # One topic, as before lanes: its DLQ's letters go back to it.
    assert replay_target(_letter("t.dlq", "renamed"), [Settings(topic="t")]) == "t"


# -- on the stack ---------------------------------------------------------------------


@pytest.mark.integration
def test_status_reports_the_lag_of_every_lane_and_each_dlq(
    lanes: Lanes, worker: ManagedProcess, ledger: Ledger
) -> None:
    name, client = ledger
    a, b = lanes.a, lanes.b
    for i in range(3):
        lanes.submit(a, "tests.app.record", name, f"a-{i}", key=f"k{i}")
    for i in range(2):
        lanes.submit(b, "tests.app.record", name, f"b-{i}", key=f"k{i}")

    # No bridge yet: nothing committed. --topics as a flag works as the variable does.
    env = lanes.env()
    flag_env = {k: v for k, v in env.items() if k != "KAFCEL_TOPICS"}
    code, report = status(flag_env, "--check", "--topics", f"{a},{b}")
    assert code == 2
    assert report["topic"] == f"{a},{b}"
    assert [(lane["topic"], lane["lag"], lane["partitions"]) for lane in report["lanes"]] == [
        (a, 3, 2),
        (b, 2, 2),
    ]
    assert [lane["dlq_topic"] for lane in report["lanes"]] == [f"{a}.dlq", f"{b}.dlq"]
    assert sorted((p["topic"], p["partition"]) for p in report["partitions"]) == [
        (a, 0),
        (a, 1),
        (b, 0),
        (b, 1),
    ]
    assert report["lag"] == 5
    assert [(d["topic"], d["depth"]) for d in report["dlqs"]] == [(f"{a}.dlq", 0), (f"{b}.dlq", 0)]
    assert report["dlq"]["depth"] == 0 and report["dlq"]["topic"] == f"{a}.dlq,{b}.dlq"
    table = kafcel("status", "--check", env=env)
    assert table.returncode == 2, table.stderr
    for text in (a, b, f"{a}.dlq", f"{b}.dlq"):
        assert text in table.stdout, text
    assert f"{a}[" in table.stderr and f"{b}[" in table.stderr, table.stderr

    # One topic, as before lanes: no lanes in the report, the same keys as ever.
    single = {**flag_env, "KAFCEL_TOPIC": a}
    _, alone = status(single)
    assert "lanes" not in alone and "dlqs" not in alone
    assert alone["topic"] == a and alone["lag"] == 3 and alone["dlq"]["topic"] == f"{a}.dlq"

    lanes.start_bridge()
    wait_until(lambda: client.hlen(f"{name}:effects") == 5, 60, "both lanes' tasks to run")

    def healthy() -> dict[str, Any] | None:
        code, report = status(env, "--check")
        # Each lane's loop names the topics of its partitions: every row gets its owner.
        owned = all(row["owner"] for row in report["partitions"])
        return report if code == 0 and report["lag"] == 0 and owned else None

    report = wait_until(healthy, 60, "every lane to be settled, OK and owned")
    assert [(lane["topic"], lane["lag"], lane["status"]) for lane in report["lanes"]] == [
        (a, 0, "OK"),
        (b, 0, "OK"),
    ]
    assert report["bridges"], "the lane bridge reports to Redis"


@pytest.mark.integration
def test_dlq_reads_each_lane_and_replays_a_letter_to_its_own_lane(lanes: Lanes) -> None:
    a, b = lanes.a, lanes.b
    env = lanes.env()
    lanes.start_bridge()
    lanes.produce(a, b"{not json", key=b"pa")
    lanes.produce(b, b"{not json", key=b"pb")
    lanes.submit(b, "tests.app.no_such_task", 1, key="nb")
    records = wait_until(lambda: dlq_records_if(env, 3), 90, "three dead letters")

    by_key = {r["key"]: r for r in records}
    assert {k: (r["dlq_topic"], r["origin"]["topic"]) for k, r in by_key.items()} == {
        "pa": (f"{a}.dlq", a),
        "pb": (f"{b}.dlq", b),
        "nb": (f"{b}.dlq", b),
    }
    for r in records:
        assert r["ref"] == f"{r['dlq_topic']}:{r['partition']}:{r['offset']}"
    assert [r["key"] for r in dlq_records(env, "--error-class", "TaskNotAllowed")] == ["nb"]
    table = kafcel("dlq", "list", env=env)
    assert table.returncode == 0 and f"{a}.dlq, {b}.dlq: 3 record(s)" in table.stdout

    # show: by the ref the list gives; a bare PARTITION:OFFSET is ambiguous with two DLQs.
    pa, pb = by_key["pa"], by_key["pb"]
    shown = kafcel("dlq", "show", pb["ref"], "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    full = json.loads(shown.stdout)
    assert full["dlq_topic"] == f"{b}.dlq" and full["error_class"] == "InvalidJson"
    bare = f"{pa['partition']}:{pa['offset']}"
    for command in (("dlq", "show", bare), ("dlq", "replay", bare)):
        out = kafcel(*command, env=env)
        one_line_error(out, "ambiguous", f"{a}.dlq", f"{b}.dlq", f"{a}.dlq:{bare}")
    out = kafcel("dlq", "show", f"nope-{lanes.run}.dlq:0:0", env=env)
    one_line_error(out, "not a DLQ topic", f"{a}.dlq, {b}.dlq")
    missing = kafcel("dlq", "replay", f"{a}.dlq:1:999999", env=env)
    one_line_error(missing, f"{a}.dlq:1:999999")

    # Replayed, b's poison record goes back to b, not to a: the lane fails it again.
    out = kafcel("dlq", "replay", pb["ref"], "--json", env=env)
    assert out.returncode == 0, out.stderr
    (sent,) = json.loads(out.stdout)["submitted"]
    assert (sent["ref"], sent["topic"]) == (pb["ref"], b)
    source = f"{b}.dlq:{pb['partition']}:{pb['offset']}"
    assert replay_sources(lanes.bootstrap, b) == [source]
    assert replay_sources(lanes.bootstrap, a) == []
    again = wait_until(
        lambda: [r for r in dlq_records(env) if r["replays"] == 1], 60, "the replay to fail again"
    )
    assert [(r["dlq_topic"], r["origin"]["topic"], r["key"]) for r in again] == [
        (f"{b}.dlq", b, "pb")
    ]
    twice = json.loads(kafcel("dlq", "replay", pb["ref"], "--json", env=env).stdout)
    assert twice["counts"]["submitted"] == 0
    assert "replayed before" in twice["skipped"][0]["reason"]
    rows = {r["ref"]: r for r in dlq_records(env)}
    assert rows[pb["ref"]]["replayed"] is not None and rows[pa["ref"]]["replayed"] is None


@pytest.mark.integration
def test_a_shared_dlq_topic_sends_each_letter_back_to_its_origin_lane(lanes: Lanes) -> None:
    a, b = lanes.a, lanes.b
    shared = f"dlq-{lanes.run}"
    ensure_topics(lanes.bootstrap, {shared: 2})
    env = lanes.env(KAFCEL_DLQ_TOPIC=shared)
    lanes.start_bridge(KAFCEL_DLQ_TOPIC=shared)
    lanes.produce(a, b"{not json", key=b"pa")
    lanes.produce(b, b"{not json", key=b"pb")
    records = wait_until(lambda: dlq_records_if(env, 2), 90, "two dead letters")
    by_key = {r["key"]: r for r in records}
    assert {k: (r["dlq_topic"], r["origin"]["topic"]) for k, r in by_key.items()} == {
        "pa": (shared, a),
        "pb": (shared, b),
    }
    # One DLQ topic: refs stay PARTITION:OFFSET, and the qualified form works too.
    for r in records:
        assert r["ref"] == f"{r['partition']}:{r['offset']}"
    shown = kafcel("dlq", "show", f"{shared}:{by_key['pa']['ref']}", "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["key"] == "pa", shown.stderr
    _, report = status(env)
    assert [(d["topic"], d["depth"]) for d in report["dlqs"]] == [(shared, 2)]
    assert {lane["dlq_topic"] for lane in report["lanes"]} == {shared}

    out = kafcel("dlq", "replay", "--all", "--json", env=env)
    assert out.returncode == 0, out.stderr
    sent = {s["ref"]: s["topic"] for s in json.loads(out.stdout)["submitted"]}
    assert sent == {by_key["pa"]["ref"]: a, by_key["pb"]["ref"]: b}
    for key, topic in (("pa", a), ("pb", b)):
        assert replay_sources(lanes.bootstrap, topic) == [f"{shared}:{by_key[key]['ref']}"]


@pytest.mark.integration
def test_range_replay_replays_the_lane_topic_names(lanes: Lanes, ledger: Ledger) -> None:
    name, _ = ledger
    a, b = lanes.a, lanes.b
    since = datetime.now(UTC).isoformat()
    for i in range(2):
        lanes.submit(a, "tests.app.record", name, f"a-{i}", key="k")
    lanes.submit(b, "tests.app.record", name, "b-0", key="k")
    env = lanes.env()

    out = kafcel("replay", "--from", since, "--dry-run", env=env)
    one_line_error(out, "'celery-tasks' is not one of the lanes", a, b, "--topic")
    out = kafcel("replay", "--from", since, "--topic", f"x-{lanes.run}", "--dry-run", env=env)
    one_line_error(out, f"'x-{lanes.run}' is not one of the lanes")

    dry = kafcel("replay", "--from", since, "--topic", b, "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["per_task"] == {"tests.app.record": 1}
    out = kafcel("replay", "--from", since, "--topic", a, "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["submitted"] == 2
    assert [s.rsplit(":", 2)[0] for s in replay_sources(lanes.bootstrap, a)] == [a, a]
    assert replay_sources(lanes.bootstrap, b) == []


@pytest.fixture()
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.integration
def test_dashboard_shows_every_lane_and_replays_by_ref(
    lanes: Lanes, ledger: Ledger, logs_dir: Path, chromium: Any
) -> None:
    name, _ = ledger
    a, b = lanes.a, lanes.b
    for topic in (a, b):
        lanes.submit(topic, "tests.app.record", name, topic, key="k")
        # What the bridge writes for a task no worker knows (bridge/deadletter.py).
        letter = DeadLetter(
            error_class="TaskNotAllowed",
            error_message="no such task",
            origin_topic=topic,
            origin_partition=0,
            origin_offset=0,
            stage="bridge",
            task="tests.app.nope",
        )
        value = json.dumps({"v": 1, "task": "tests.app.nope", "args": []}).encode()
        lanes.produce(f"{topic}.dlq", value, key=topic.encode(), headers=letter.headers())
    dash, url = start_dashboard(lanes.env(), logs_dir, f"lanes-{lanes.run}")

    def call(path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            url + path.lstrip("/"),
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def status_read() -> tuple[int, Any] | None:
        code, doc = call("/api/status")
        loading = code == 503 and any(t in doc["error"] for t in _COORDINATOR_LOADING)
        return None if loading else (code, doc)

    try:
        code, report = wait_until(status_read, 60, "Kafka's group coordinator to answer")
        assert code == 200, report
        assert [(lane["topic"], lane["lag"]) for lane in report["lanes"]] == [(a, 1), (b, 1)]
        assert [(d["topic"], d["depth"]) for d in report["dlqs"]] == [
            (f"{a}.dlq", 1),
            (f"{b}.dlq", 1),
        ]
        code, listed = call("/api/dlq")
        assert code == 200 and listed["topics"] == [f"{a}.dlq", f"{b}.dlq"], listed
        refs = {r["origin"]["topic"]: r["ref"] for r in listed["records"]}
        assert set(refs) == {a, b} and all(ref.count(":") == 2 for ref in refs.values())

        # The page: a row per lane, partitions named by topic, dead letters by full ref.
        page = chromium.new_page(viewport={"width": 1440, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        for topic in (a, b):
            lag = page.get_by_test_id(f"lane-{topic}-lag")
            lag.wait_for(timeout=20_000)
            assert lag.inner_text() == "1"
            assert page.get_by_test_id(f"lane-{topic}-dlq-topic").inner_text() == f"{topic}.dlq"
            assert page.get_by_test_id(f"partition-{topic}-0").is_visible()
            row = refs[topic].replace(":", "-")
            page.get_by_test_id(f"dlq-row-{row}").wait_for(timeout=20_000)
            assert page.get_by_test_id(f"dlq-origin-{row}").inner_text() == topic

        # Replay b's letter from the page, by its full ref: it lands on b.
        page.get_by_test_id(f"dlq-replay-{refs[b].replace(':', '-')}").click()
        result = page.get_by_test_id("dlq-replay-result")
        wait_until(lambda: "replayed 1 of 1" in result.inner_text(), 30, "the page's replay")
        assert replay_sources(lanes.bootstrap, b) == [refs[b]]
        assert not errors, errors

        # The API: a bare position is ambiguous; by ref, or topic and position, it is not.
        _, p, o = parse_ref(refs[a])
        code, doc = call("/api/dlq/replay", {"records": [{"partition": p, "offset": o}]})
        assert code == 400 and "ambiguous" in doc["error"], doc
        gone = f"{a}.dlq:1:999999"
        body = {
            "records": [{"topic": f"{a}.dlq", "partition": p, "offset": o}, {"ref": gone}],
            "new_id": True,
        }
        code, doc = call("/api/dlq/replay", body)
        assert code == 200, doc
        assert [(s["ref"], s["topic"]) for s in doc["submitted"]] == [(refs[a], a)]
        assert doc["missing"] == [gone]
        assert replay_sources(lanes.bootstrap, a) == [refs[a]]
        assert replay_sources(lanes.bootstrap, b) == [refs[b]]
    finally:
        assert dash.stop(timeout_s=10) == 0, dash.tail()
