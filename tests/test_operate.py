"""Operating kafcel through its CLI: status evaluation and --check, the DLQ commands,
time-range replay, JSON logs. Real bridge, real worker, real Tansu and Redis."""

from __future__ import annotations

import json
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer

from kafcel import Producer
from kafcel.dev.procs import ManagedProcess, worker_argv
from kafcel.protocol.deadletter import parse_dlq_headers

from .conftest import ROOT, TEST_APP, Pipeline, wait_until
from .test_cli import kafcel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Ledger = tuple[str, "redis.Redis[bytes]"]


def status(pipeline: Pipeline, *extra: str, **overrides: Any) -> tuple[int, dict[str, Any]]:
    out = kafcel("status", "--json", *extra, env=pipeline.env(**overrides))
    assert out.returncode in (0, 2), out.stderr
    assert "Traceback" not in out.stderr
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


def dlq_records(pipeline: Pipeline, *args: str) -> list[dict[str, Any]]:
    out = kafcel("dlq", "list", "--json", "--limit", "0", *args, env=pipeline.env())
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def effects(client: redis.Redis[bytes], name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(f"{name}:effects").items()}


def test_status_is_ok_then_stall_then_stop_and_check_says_so(pipeline: Pipeline) -> None:
    window = {"lag_window_s": 4.0}
    bridge = pipeline.start_bridge()
    with Producer(settings=pipeline.settings) as producer:
        for i in range(8):
            producer.submit("tests.app.record", args=[f"ok-{uuid.uuid4().hex[:6]}", i], key=f"k{i}")
    wait_until(pipeline.fully_committed, 60, "the tasks to settle")

    def caught_up() -> tuple[int, dict[str, Any]] | None:
        # The bridge publishes its counters every 2 s: its report may trail the commit,
        # and on a quick run still be the one from before its assignment.
        code, report = status(pipeline, "--check", **window)
        owned = all(p["owner"] for p in report["partitions"])
        return (code, report) if report["in_flight"] == 0 and owned else None

    code, report = wait_until(caught_up, 15, "the bridge's report of what it settled")
    assert code == 0 and report["evaluation"]["status"] == "OK"
    assert {p["status"] for p in report["partitions"]} == {"OK"}
    assert all(p["owner"] for p in report["partitions"])
    assert report["bridges"] and report["in_flight"] == 0
    assert report["tasks"]["states"].get("SUCCESS", 0) >= 8

    # A queue no worker reads: dispatched, never settled, so the committed offset sticks.
    stuck_queue = f"nobody-{uuid.uuid4().hex[:6]}"
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.record", args=["stuck", 1], key="stuck", queue=stuck_queue)
    try:

        def evaluated(expected: str) -> bool:
            _, report = status(pipeline, **window)
            return report["evaluation"]["status"] == expected

        wait_until(lambda: evaluated("STALL"), 60, "the stuck partition to be STALL")
        code, report = status(pipeline, "--check", **window)
        assert code == 2
        stalled = [p for p in report["partitions"] if p["status"] == "STALL"]
        assert len(stalled) == 1 and stalled[0]["lag"] == 1 and stalled[0]["owner"]
        assert "not moved" in stalled[0]["reason"]
        assert report["in_flight"] == 1

        bridge.signal(signal.SIGKILL)
        wait_until(lambda: evaluated("STOP"), 60, "the partition without a bridge to be STOP")
        code, report = status(pipeline, "--check", **window)
        assert code == 2
        stopped = [p for p in report["partitions"] if p["status"] == "STOP"]
        assert len(stopped) == 1 and stopped[0]["partition"] == stalled[0]["partition"]
        table = kafcel("status", "--check", env=pipeline.env(**window))
        assert table.returncode == 2 and "STOP" in table.stdout
        assert "status STOP" in table.stderr and "Traceback" not in table.stderr
    finally:
        redis.Redis.from_url(pipeline.settings.redis_url).delete(stuck_queue)


def test_a_task_waiting_for_its_countdown_is_not_a_stall(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    window = {"lag_window_s": 3.0}
    pipeline.start_bridge()
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.record", args=[name, "later"], key="sched", countdown=20)
    held = "waits for its eta"

    def scheduled() -> bool:
        _, report = status(pipeline, **window)
        rows = [p for p in report["partitions"] if p["lag"]]
        return len(rows) == 1 and held in rows[0]["reason"]

    wait_until(scheduled, 60, "the partition to read as waiting for a scheduled task")
    # Every reading over twice the window, while the countdown runs, is OK: --check pages
    # no one although the commit is held far longer than the window.
    first_at = None
    while True:
        code, report = status(pipeline, "--check", **window)
        assert code == 0 and report["evaluation"]["status"] == "OK", report["partitions"]
        assert [p["reason"] for p in report["partitions"] if p["lag"]] == [
            "the oldest unsettled task waits for its eta (scheduled)"
        ]
        first_at = first_at or report["at"]
        if report["at"] - first_at > 2 * window["lag_window_s"]:
            break
    wait_until(lambda: effects(client, name) == {"later": 1}, 60, "the scheduled task to run")
    wait_until(pipeline.fully_committed, 30, "its record to settle")


def test_dlq_list_show_filters_and_replay_after_a_fix(pipeline: Pipeline, ledger: Ledger) -> None:
    name, client = ledger
    client.set(f"{name}:broken", 1)
    pipeline.start_bridge()
    raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    raw.produce(pipeline.settings.topic, b"{not json", key=b"bad-key", headers=[("app", b"go")])
    raw.flush(10)
    with Producer(settings=pipeline.settings) as producer:
        failing = producer.submit("tests.app.fails_while_broken", args=[name, 7], key="order-7")
        producer.submit("tests.app.no_such_task", args=[1], key="order-8")
    wait_until(lambda: len(dlq_records(pipeline)) == 3, 90, "three dead letters")
    wait_until(pipeline.fully_committed, 30, "the partitions to move past them")

    records = dlq_records(pipeline)
    by_class = {r["error_class"]: r for r in records}
    assert set(by_class) == {"InvalidJson", "TaskNotAllowed", "RuntimeError"}
    worker_failure = by_class["RuntimeError"]
    assert worker_failure["task_id"] == failing and worker_failure["stage"] == "worker"
    assert worker_failure["attempts"] == 1 and worker_failure["replays"] == 0
    assert [r["ref"] for r in dlq_records(pipeline, "--task", "tests.app.fails_*")] == [
        worker_failure["ref"]
    ]
    assert [r["error_class"] for r in dlq_records(pipeline, "--error-class", "Invalid*")] == [
        "InvalidJson"
    ]
    assert [r["key"] for r in dlq_records(pipeline, "--key", "order-8")] == ["order-8"]
    assert dlq_records(pipeline, "--since", "-1h", "--until", "-30m") == []
    assert len(dlq_records(pipeline, "--since", "-10m", "--until", "now")) == 3

    shown = kafcel("dlq", "show", worker_failure["ref"], "--json", env=pipeline.env())
    assert shown.returncode == 0, shown.stderr
    full = json.loads(shown.stdout)
    assert full["value"]["task"] == "tests.app.fails_while_broken"
    assert "the fix is not deployed yet" in full["traceback"]
    table = kafcel("dlq", "show", worker_failure["ref"], env=pipeline.env())
    assert table.returncode == 0 and "RuntimeError" in table.stdout
    missing = kafcel("dlq", "show", "3:999999", env=pipeline.env())
    assert missing.returncode == 1 and "no record at 3:999999" in missing.stderr

    # Still broken: the replay fails again and comes back with its attempts and replays.
    out = kafcel("dlq", "replay", worker_failure["ref"], "--json", env=pipeline.env())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["submitted"][0]["task_id"] == failing
    wait_until(lambda: len(dlq_records(pipeline)) == 4, 90, "the replay to fail again")
    again = [r for r in dlq_records(pipeline) if r["replays"] == 1]
    assert len(again) == 1 and again[0]["task_id"] == failing and again[0]["attempts"] == 1
    twice = kafcel("dlq", "replay", worker_failure["ref"], "--json", env=pipeline.env())
    skipped = json.loads(twice.stdout)
    assert skipped["counts"]["submitted"] == 0
    assert "replayed before" in skipped["skipped"][0]["reason"]

    # The fix is deployed: replaying the second failure runs it, under the same id.
    client.delete(f"{name}:broken")
    out = kafcel("dlq", "replay", again[0]["ref"], env=pipeline.env())
    assert out.returncode == 0, out.stderr
    wait_until(lambda: effects(client, name) == {"7": 1}, 60, "the fixed task to run")

    def backend_status() -> str | None:
        raw = client.get(f"celery-task-meta-{failing}")
        return json.loads(raw)["status"] if raw else None

    wait_until(lambda: backend_status() == "SUCCESS", 30, "the original id to succeed")
    # A success is never undone by a same-id replay; a new id runs it again on purpose.
    out = kafcel("dlq", "replay", worker_failure["ref"], "--again", "--json", env=pipeline.env())
    assert "succeeded" in json.loads(out.stdout)["skipped"][0]["reason"]
    out = kafcel(
        "dlq", "replay", worker_failure["ref"], "--again", "--new-id", "--json", env=pipeline.env()
    )
    new_id = json.loads(out.stdout)["submitted"][0]["task_id"]
    assert new_id != failing
    wait_until(lambda: effects(client, name) == {"7": 2}, 60, "the new-id replay to run")
    wait_until(pipeline.fully_committed, 30, "every replay to settle")

    # Replay headers: where each copy came from, and the count.
    def copies(got: list[Any]) -> list[dict[str, bytes]]:
        heads = [dict(m.headers() or []) for m in got]
        return [h for h in heads if "kafcel-replay-of" in h]

    replayed = copies(pipeline.read(pipeline.settings.topic, lambda got: len(copies(got)) >= 3))
    assert {h["kafcel-replay-original-id"].decode() for h in replayed} == {failing}
    assert sorted(int(h["kafcel-replay-count"]) for h in replayed) == [1, 1, 2]


def test_replay_a_time_range_by_task_and_key(pipeline: Pipeline, ledger: Ledger) -> None:
    name, client = ledger
    pipeline.start_bridge()
    with Producer(settings=pipeline.settings) as producer:
        for i in range(3):
            producer.submit("tests.app.record", args=[name, f"early-{i}"], key="a")
    wait_until(lambda: len(effects(client, name)) == 3, 60, "the early tasks")
    # The range starts just after the early records' own timestamps (milliseconds).
    early = pipeline.read(pipeline.settings.topic, until=lambda got: len(got) >= 3)
    last_ms = max(m.timestamp()[1] for m in early)
    since = datetime.fromtimestamp((last_ms + 1) / 1000, UTC).isoformat()
    with Producer(settings=pipeline.settings) as producer:
        for i in range(4):
            producer.submit("tests.app.record", args=[name, f"late-a-{i}"], key="a")
        for i in range(2):
            producer.submit("tests.app.record", args=[name, f"late-b-{i}"], key="b")
        producer.submit("tests.app.fails_while_broken", args=[name, "late-c"], key="c")
    wait_until(lambda: len(effects(client, name)) == 10, 60, "the late tasks")
    wait_until(pipeline.fully_committed, 30, "the late tasks to settle")

    everything = kafcel("dlq", "replay", env=pipeline.env())
    assert everything.returncode == 1 and "--all" in everything.stderr

    dry = kafcel("replay", "--from", since, "--dry-run", "--json", env=pipeline.env())
    assert dry.returncode == 0, dry.stderr
    counts = json.loads(dry.stdout)
    assert counts["per_task"] == {"tests.app.fails_while_broken": 1, "tests.app.record": 6}
    assert counts["submitted"] == 0
    table = kafcel("replay", "--from", since, "--to", "now", "--dry-run", env=pipeline.env())
    assert table.returncode == 0 and "tests.app.record" in table.stdout

    # Same ids: everything already finished, the once-guard skips them all.
    same = kafcel(
        "replay", "--from", since, "--task", "tests.app.rec*", "--key", "b", "--same-id",
        "--json", env=pipeline.env(),
    )  # fmt: skip
    assert json.loads(same.stdout)["submitted"] == 2
    wait_until(pipeline.fully_committed, 60, "the same-id replays to settle")
    assert all(v == 1 for v in effects(client, name).values())

    # New ids (the default): key a's four late tasks run once more, nothing else.
    out = kafcel("replay", "--from", since, "--key", "a", "--json", env=pipeline.env())
    assert json.loads(out.stdout)["submitted"] == 4
    wait_until(lambda: sum(effects(client, name).values()) == 14, 60, "the replayed range to run")
    got = effects(client, name)
    assert {k for k, v in got.items() if v == 2} == {f"late-a-{i}" for i in range(4)}
    # A second replay of the range does not replay the first one's copies.
    again = json.loads(
        kafcel("replay", "--from", since, "--dry-run", "--json", env=pipeline.env()).stdout
    )
    assert again["per_task"] == counts["per_task"]
    assert again["skipped"]["copies written by an earlier replay"] == 6
    every = kafcel(
        "replay", "--from", since, "--dry-run", "--include-replays", "--json", env=pipeline.env()
    )
    assert json.loads(every.stdout)["per_task"]["tests.app.record"] == 12

    bad = kafcel("replay", "--from", "yesterday-ish", env=pipeline.env())
    assert bad.returncode == 1 and "is not a time" in bad.stderr and "Traceback" not in bad.stderr


def test_json_logs_carry_one_event_per_line(pipeline: Pipeline, ledger: Ledger) -> None:
    name, _ = ledger
    bridge = pipeline.start_bridge(log_format="json")
    with Producer(settings=pipeline.settings) as producer:
        ids = [
            producer.submit(
                "tests.app.record", args=[name, i], key=f"user-{i}", trace_id=f"trace-{i}"
            )
            for i in range(3)
        ]
    raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    raw.produce(pipeline.settings.topic, b"\xff\xfe", key=b"k-bad")
    raw.flush(10)
    wait_until(pipeline.fully_committed, 60, "everything to settle")
    log_text = bridge.log_path.read_text()

    def events() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in bridge.log_path.read_text().splitlines()
                 if line.startswith("{")]  # fmt: skip
        return [e for e in lines if "event" in e]

    wait_until(lambda: sum(e["event"] == "settled" for e in events()) == 3, 30, "settle events")
    assert log_text.strip()
    for line in bridge.log_path.read_text().splitlines():
        if line.startswith("{"):
            json.loads(line)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events():
        by_id.setdefault(str(event.get("task_id")), []).append(event)
    for i, task_id in enumerate(ids):
        kinds = [e["event"] for e in by_id[task_id]]
        assert kinds == ["dispatched", "settled"], kinds
        for e in by_id[task_id]:
            assert e["key"] == f"user-{i}" and e["trace_id"] == f"trace-{i}"
            assert e["topic"] == pipeline.settings.topic
            assert isinstance(e["partition"], int) and isinstance(e["offset"], int)
            assert e["level"] and e["ts"] and e["task"] == "tests.app.record"
    dead = [e for e in events() if e["event"] == "dead_lettered"]
    assert len(dead) == 1 and dead[0]["error_class"] == "InvalidEncoding"
    assert dead[0]["key"] == "k-bad" and dead[0]["offset"] >= 0
    headers = parse_dlq_headers(
        pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)[0].headers()
    )
    assert headers["error.class"] == "InvalidEncoding"


def test_worker_json_logs_carry_the_task_events(pipeline: Pipeline, ledger: Ledger) -> None:
    name, _ = ledger
    queue = f"q-{uuid.uuid4().hex[:8]}"
    worker = ManagedProcess(
        name=f"worker {queue}",
        argv=worker_argv(TEST_APP, queue=queue, concurrency=1, name=queue),
        env=pipeline.env(log_format="json"),
        log_path=pipeline.logs_dir / f"{queue}-json-worker.log",
        cwd=ROOT,
    ).start()
    try:
        worker.wait_for_log(" ready.", timeout_s=60)
        pipeline.start_bridge()
        with Producer(settings=pipeline.settings) as producer:
            ok = producer.submit(
                "tests.app.record", args=[name, 1], key="u1", queue=queue, trace_id="t1"
            )
            bad = producer.submit("tests.app.always_fail", args=[name, 2], key="u2", queue=queue)
        wait_until(pipeline.fully_committed, 90, "both tasks to settle")

        def finished() -> dict[str, dict[str, Any]]:
            lines = worker.log_path.read_text().splitlines()
            found = [json.loads(line) for line in lines if line.startswith("{")]
            return {e["task_id"]: e for e in found if e.get("event") == "finished"}

        events = wait_until(lambda: len(finished()) == 2 and finished(), 30, "finished events")
        assert events[ok]["status"] == "success" and events[ok]["key"] == "u1"
        assert events[ok]["trace_id"] == "t1" and events[ok]["runtime_ms"] >= 0
        assert events[ok]["topic"] == pipeline.settings.topic
        assert isinstance(events[ok]["partition"], int) and isinstance(events[ok]["offset"], int)
        assert events[bad]["status"] == "failure" and events[bad]["error_class"] == "RuntimeError"
        # Celery's own lines are JSON too: one object per line, nothing else.
        lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
        ready = [json.loads(line) for line in lines if line.startswith("{") and "ready" in line]
        assert ready and ready[0]["level"] == "info"
    finally:
        worker.stop(timeout_s=20)
        redis.Redis.from_url(pipeline.settings.redis_url).delete(queue)


def test_a_bad_route_holds_its_tasks_shows_stall_and_dead_letters_nothing(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    """A deploy routes a task to a queue the app lacks: its records are held, not
    dead-lettered; status says STALL with the reason; the fixed deploy runs them."""
    name, client = ledger
    bad = pipeline.start_bridge(app="tests.misrouted_app:app")
    with Producer(settings=pipeline.settings) as producer:
        for i in range(4):
            producer.submit("tests.app.record", args=[name, i], key="same")
        producer.submit("tests.app.flaky_bind", args=[name, "other", 0], key="other")
    wait_until(lambda: effects(client, name).get("other") == 1, 60, "the other task to run")

    def held() -> list[dict[str, Any]]:
        _, report = status(pipeline)
        return [p for p in report["partitions"] if p["status"] == "STALL"]

    (row,) = wait_until(held, 60, "the held partition to show STALL")
    assert "dispatch held" in row["reason"] and "nowhere" in row["reason"]
    bad.wait_for_log("QueueNotFound", timeout_s=10)
    assert dlq_records(pipeline) == []
    assert not any(k.startswith("0") for k in effects(client, name))

    bad.stop(timeout_s=30)  # the fixed deploy
    pipeline.start_bridge()
    wait_until(pipeline.fully_committed, 90, "the held tasks to run and settle")
    assert effects(client, name) == {"0": 1, "1": 1, "2": 1, "3": 1, "other": 1}
    runs = [e.decode() for e in client.lrange(f"{name}:log", 0, -1)]
    assert [e for e in runs if not e.startswith("other")] == ["0:0", "1:0", "2:0", "3:0"]
    assert dlq_records(pipeline) == []
