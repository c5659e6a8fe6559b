"""The hostile corpus: every record ends in the DLQ with its reason and nothing else happens.

Nothing else means: no record reaches Celery (no worker log line, no result, no once-guard
key, no ledger effect, no outcome), the bridge is the process it was at the start, no
pickle is ever decoded, and the group's offsets reach the end of the topic.
"""

from __future__ import annotations

import _pickle
import pickle
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from kafcel import Envelope, Outcome, derive_task_id
from kafcel.bridge.filter import TaskFilter
from kafcel.errors import RecordRejected
from kafcel.protocol.deadletter import DLQ_HEADER_PREFIX, parse_dlq_headers

from .conftest import Pipeline, wait_until
from .hostile_corpus import CANARY, DENY, HOSTILE_LEDGER, MAX_RECORD_BYTES, Hostile, corpus

Ledger = tuple[str, "redis.Redis[bytes]"]
pytestmark = [pytest.mark.tansu]

LABEL = "origin-app"
KEYS = [b"k0", b"k1", b"k2", b"k3"]
# The bridge's DLQ producer keeps librdkafka's default message.max.bytes (1,000,000):
# a bigger DLQ copy goes out without its value (docs/envelope.md, section 3).
DLQ_MESSAGE_MAX = 1_000_000
REQUIRED = {
    "truncated",
    "utf8",
    "too-large",
    "nesting",
    "pickle",
    "task",
    "types",
    "version",
    "huge-int",
    "nan",
    "duplicate-key",
    "nul",
    "empty",
    "top-level",
    "header-flood",
}

CORPUS = corpus()


def _never_unpickle(*_: Any, **__: Any) -> Any:
    raise AssertionError("something tried to unpickle a record")


@pytest.fixture()
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (pickle, _pickle):
        for name in ("loads", "load", "Unpickler"):
            monkeypatch.setattr(module, name, _never_unpickle)


def test_corpus_covers_every_category_with_many_variants() -> None:
    assert len(CORPUS) >= 100
    per_category = Counter(h.label.split("/")[0] for h in CORPUS)
    assert set(per_category) == REQUIRED
    assert min(per_category.values()) >= 4, per_category
    assert len({h.label for h in CORPUS}) == len(CORPUS)


@pytest.fixture(scope="module")
def allow_list() -> TaskFilter:
    from .app import app

    # The filter the bridge builds from the same app and the same deny patterns.
    app.loader.import_default_modules()
    app.finalize(auto=True)
    return TaskFilter(registered=list(app.tasks.keys()), deny=DENY)


@pytest.mark.usefixtures("no_pickle")
@pytest.mark.parametrize("hostile", CORPUS, ids=[h.label for h in CORPUS])
def test_decoder_rejects_with_the_expected_class(hostile: Hostile, allow_list: TaskFilter) -> None:
    started = time.perf_counter()
    with pytest.raises(RecordRejected) as caught:
        envelope = Envelope.decode(hostile.value, max_bytes=MAX_RECORD_BYTES)
        allow_list.check(envelope.task)
    elapsed = time.perf_counter() - started
    assert type(caught.value).__name__ == hostile.expected_error, caught.value
    assert caught.value.reason
    # A hostile record must be cheap to refuse, whatever its shape.
    assert elapsed < 0.5, f"{elapsed:.2f}s to refuse {hostile.label}"
    assert not CANARY.exists()


# -- integration -----------------------------------------------------------------------


def _read_to_end(pipeline: Pipeline, topic: str) -> list[Message]:
    """Every record of ``topic`` up to its current end."""
    ends = pipeline.ends(topic)
    consumer = Consumer(
        {
            "bootstrap.servers": pipeline.settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(t, p, 0) for (t, p), end in ends.items() if end > 0])
    got: list[Message] = []
    positions = {tp: 0 for tp in ends}
    deadline = time.monotonic() + 30
    try:
        while any(positions[tp] < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: {positions} of {ends}")
            for m in consumer.consume(500, timeout=0.2):
                if m.error() is None:
                    got.append(m)
                    tp = (str(m.topic()), int(m.partition() or 0))
                    positions[tp] = max(positions[tp], int(m.offset() or 0) + 1)
        return got
    finally:
        consumer.close()


def _headers(m: Message) -> list[tuple[str, bytes]]:
    raw = m.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v if isinstance(v, bytes) else str(v or "").encode()) for k, v in pairs]


def _label(m: Message) -> str | None:
    return next((v.decode() for k, v in _headers(m) if k == LABEL), None)


def _check_dead_letters(pipeline: Pipeline, written: dict[str, tuple[int, int, int]]) -> list[str]:
    """Each hostile record in the DLQ once, with its class, reason, origin, key and bytes."""
    topic = pipeline.settings.topic
    problems: list[str] = []
    # Found by origin rather than by label: a record too big for the DLQ may lose headers.
    at: dict[tuple[str, str], list[Message]] = {}
    for m in _read_to_end(pipeline, pipeline.settings.dlq_topic):
        got = parse_dlq_headers(_headers(m))
        if got.get("origin.topic") == topic:
            origin = (got.get("origin.partition", ""), got.get("origin.offset", ""))
            at.setdefault(origin, []).append(m)
        else:
            problems.append(f"DLQ record from elsewhere: {got}")
    missing: list[str] = []
    for i, h in enumerate(CORPUS):
        partition, offset, _ = written[h.label]
        copies = at.pop((str(partition), str(offset)), [])
        if not copies:
            missing.append(h.label)
            continue
        if len(copies) > 1:
            problems.append(f"{h.label}: {len(copies)} DLQ records, expected 1")
        m = copies[0]
        got = parse_dlq_headers(_headers(m))
        if (got.get("error.class"), got.get("stage")) != (h.expected_error, "bridge"):
            problems.append(
                f"{h.label}: {got.get('error.class')} ({got.get('error.message')!r}) "
                f"at stage {got.get('stage')}, expected {h.expected_error} at stage bridge"
            )
        if not got.get("error.message"):
            problems.append(f"{h.label}: no reason")
        if m.key() != KEYS[i % len(KEYS)]:
            problems.append(f"{h.label}: key {m.key()!r} not kept")
        kept = [(k, v) for k, v in _headers(m) if not k.startswith(DLQ_HEADER_PREFIX)]
        original = [(LABEL, h.label.encode())]
        original += [(k, v) for k, v in h.headers or [] if not k.startswith(DLQ_HEADER_PREFIX)]
        size = len(h.value or b"") + sum(len(k) + len(v) for k, v in original)
        # Anything that fits a DLQ record keeps its bytes and headers for replay. Above
        # that the documented fallback is a null value plus the original length, then
        # also no original headers (kafcel.headers_dropped counts them).
        fits = size < DLQ_MESSAGE_MAX
        if kept != original and (fits or (kept and kept != original)):
            problems.append(f"{h.label}: {len(kept)} of {len(original)} headers kept")
        if m.value() != h.value:
            dropped = got.get("value_dropped_bytes")
            fallback = m.value() is None and dropped == str(len(h.value or b""))
            if fits or not fallback:
                problems.append(f"{h.label}: original value not kept (dropped={dropped})")
    if missing:
        problems.append(f"{len(missing)} record(s) not in the DLQ: {', '.join(missing)}")
    for where, ms in at.items():
        labels = [_label(m) for m in ms]
        problems.append(f"DLQ record(s) {labels} at {'/'.join(where)} not from the corpus")
    return problems


def _allow_big_records(bootstrap_servers: str, topic: str, max_bytes: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                str(max_bytes),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_hostile_corpus_is_dead_lettered_and_nothing_reaches_celery(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    for suffix in ("attempts", "effects", "started", "log"):
        client.delete(f"{HOSTILE_LEDGER}:{suffix}")
    topic = pipeline.settings.topic
    if pipeline.stack.broker == "kafka":
        # Apache Kafka refuses records above its topic's max.message.bytes (1 MiB by
        # default) at the door; a cluster that allows more must meet the bridge's own
        # limit, which is what this corpus tests. Tansu has no such limit.
        _allow_big_records(pipeline.settings.bootstrap_servers, topic, 32 * 1024 * 1024)
    bridge = pipeline.start_bridge(deny=DENY)
    pid = bridge.pid

    raw = KafkaProducer(
        {
            "bootstrap.servers": pipeline.settings.bootstrap_servers,
            # librdkafka refuses to send anything above 1 MB by default.
            "message.max.bytes": 32 * 1024 * 1024,
            "linger.ms": 5,
        }
    )
    written: dict[str, tuple[int, int, int]] = {}  # label -> partition, offset, timestamp
    failed: list[str] = []

    def delivered(label: str) -> Any:
        def report(err: Any, msg: Message) -> None:
            if err is not None:
                failed.append(f"{label}: {err}")
            else:
                written[label] = (
                    int(msg.partition() or 0),
                    int(msg.offset() or 0),
                    msg.timestamp()[1],
                )

        return report

    for i, h in enumerate(CORPUS):
        raw.produce(
            topic,
            h.value,
            key=KEYS[i % len(KEYS)],
            headers=[(LABEL, h.label.encode()), *(h.headers or [])],
            on_delivery=delivered(h.label),
        )
        raw.poll(0)
    # Good records behind the hostile ones on every key still run, one of them under
    # 5,000 Kafka headers: the bridge only copies headers, so a flood on a valid record
    # is not hostile.
    valid: dict[str, str] = {}
    flood = [(f"h{i}", b"v") for i in range(5000)]
    for i in range(2 * len(KEYS)):
        task_id = f"{name}-valid-{i}"
        valid[task_id] = f"valid-{i}"
        raw.produce(
            topic,
            Envelope(task="tests.app.record", args=(name, f"valid-{i}"), id=task_id).encode(),
            key=KEYS[i % len(KEYS)],
            headers=[(LABEL, f"valid-{i}".encode()), *(flood if i == 0 else [])],
        )
    assert raw.flush(60) == 0
    assert not failed, failed
    assert len(written) == len(CORPUS)

    def ran_valid() -> bool:
        return {k.decode() for k in client.hkeys(f"{name}:effects")} >= set(valid.values())

    problems: list[str] = []
    # A dead bridge ends the waits early; the checks below then say what is missing.
    try:
        wait_until(lambda: ran_valid() or not bridge.alive(), 60, "the valid records to run")
        wait_until(
            lambda: not bridge.alive() or pipeline.fully_committed(), 60, "offsets at the end"
        )
    except AssertionError as exc:
        problems.append(f"{exc}; bridge log tail:\n{bridge.tail(15)}")
    if not bridge.alive():
        problems.append(f"the bridge (pid {pid}) died, exit {bridge.proc and bridge.proc.poll()}:")
        problems.append(bridge.tail(5))
    elif not pipeline.fully_committed():
        problems.append("offsets are not committed to the end")

    problems += _check_dead_letters(pipeline, written)

    # -- nothing hostile reached Celery -------------------------------------------------
    hostile_ids = {
        derive_task_id(topic, p, off, stamp): label for label, (p, off, stamp) in written.items()
    }
    results = _read_to_end(pipeline, pipeline.settings.results_topic)
    ran = {Outcome.decode(m.value() or b"").task_id for m in results}
    if ran != set(valid):
        reached = sorted(hostile_ids.get(t, t) for t in ran - set(valid))
        problems.append(f"outcomes: hostile {reached}, valid missing {sorted(set(valid) - ran)}")
    worker_log_path = pipeline.logs_dir / f"worker-{pipeline.stack.broker}.log"
    worker_log = worker_log_path.read_text(errors="replace")
    if not any(task_id in worker_log for task_id in valid):
        problems.append("no valid task id in the worker log: the worker log check is blind")
    for task_id, label in hostile_ids.items():
        if task_id in worker_log:
            problems.append(f"{label}: in the worker log as task {task_id}")
        if client.exists(f"celery-task-meta-{task_id}", f"kafcel:once:{task_id}"):
            problems.append(f"{label}: has Celery result / once-guard keys ({task_id})")
    effects = {k.decode() for k in client.hkeys(f"{name}:effects")}
    if effects != set(valid.values()):
        problems.append(f"ledger effects {sorted(effects - set(valid.values()))} not from valid")
    for suffix in ("attempts", "effects", "started", "log"):
        key = f"{HOSTILE_LEDGER}:{suffix}"
        if client.exists(key):
            trace = client.lrange(key, 0, 5) if suffix == "log" else client.hkeys(key)
            problems.append(f"a hostile record ran a task: {key} holds {trace!r:.300}")
            client.delete(key)

    # -- the bridge survived, and no pickle was ever decoded -----------------------------
    log = bridge.log_path.read_text(errors="replace")
    # One start in the log: the process at the end is the one from the start.
    if log.count("bridge started") != 1 or "Traceback" in log:
        problems.append(f"bridge log shows a restart or a traceback:\n{bridge.tail(15)}")
    if CANARY.exists():
        problems.append(f"{CANARY} exists: a pickle was decoded")

    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)
