"""Rolling upgrades: records written by a newer kafcel are read, not dropped.

During an upgrade a newer worker may publish an outcome, or a newer writer a DLQ record,
with fields this version does not know. Every reader (the bridge's outcome reader, the
once-guard's done markers, ``kafcel dlq``, status, replay) must read what it knows and keep
or ignore the rest; a record that truly cannot be read is logged with its position.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer

from kafcel import Envelope, KafcelError, Outcome, Producer
from kafcel.ops.deadletters import find_dead_letter, read_dead_letters, replay_dead_letters
from kafcel.ops.status import _dlq
from kafcel.protocol.deadletter import DeadLetter, dlq_headers
from kafcel.protocol.outcome import SUCCESS, Origin

from .conftest import Pipeline, wait_until

pytestmark = pytest.mark.timeout(120)

Ledger = tuple[str, "redis.Redis[bytes]"]


def newer_outcome(task_id: str, **fields: object) -> bytes:
    """An outcome as a newer worker might write it: every field we know, and more."""
    doc = json.loads(Outcome(task_id=task_id, task="tests.app.record", status=SUCCESS).encode())
    doc.update(fields)
    return json.dumps(doc).encode()


def test_outcome_decode_keeps_unknown_fields_and_writes_them_back() -> None:
    raw = newer_outcome("t-1", cost_ms=12, placement={"zone": "b"})
    outcome = Outcome.decode(raw)
    assert outcome.task_id == "t-1" and outcome.status == SUCCESS
    assert outcome.extra == {"cost_ms": 12, "placement": {"zone": "b"}}
    # A done marker re-announced by an older worker keeps what the newer one wrote.
    origin = Origin(topic="t", partition=0, offset=1, fence="b.2")
    assert json.loads(outcome.encode())["duplicate"] is False  # encoded once, kept
    again = json.loads(outcome.announced_for(origin).encode())
    assert again["cost_ms"] == 12 and again["placement"] == {"zone": "b"}
    assert again["duplicate"] is True and again["fence"] == "b.2"


def test_outcome_decode_reads_a_status_and_version_it_does_not_know() -> None:
    outcome = Outcome.decode(newer_outcome("t-2", status="SKIPPED", v=2))
    assert outcome.status == "SKIPPED" and outcome.v == 2


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1]", b'{"task": "x", "status": "SUCCESS"}', b'{"task_id": 1, "status": 2}'],
)
def test_outcome_decode_refuses_what_truly_cannot_be_read(raw: bytes) -> None:
    with pytest.raises(KafcelError, match="not a kafcel outcome"):
        Outcome.decode(raw)


@pytest.mark.integration
def test_an_outcome_from_a_newer_worker_settles_its_record(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, _ = ledger
    bridge = pipeline.start_bridge()
    # No worker reads this queue: the only outcome the bridge gets is the one written here.
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    try:
        with Producer(settings=pipeline.settings) as producer:
            task_id = f"{name}-newer"
            envelope = Envelope(task="tests.app.record", args=(name, 1), id=task_id, queue=queue)
            producer.send(envelope, key="k")
        # An outcome is for a dispatched task: one read before the dispatch answers nothing.
        celery_redis = redis.Redis.from_url(pipeline.settings.redis_url)
        wait_until(lambda: celery_redis.llen(queue) == 1, 30, "the task to be dispatched")
        raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
        raw.produce(pipeline.settings.results_topic, b"garbage, not an outcome", key=b"k")
        raw.produce(
            pipeline.settings.results_topic,
            newer_outcome(task_id, cost_ms=3, placement={"zone": "b"}),
            key=b"k",
        )
        assert raw.flush(10) == 0
        wait_until(pipeline.fully_committed, 30, "the record to settle on the newer outcome")
        # The record that cannot be read is not dropped silently: its position is logged.
        bridge.wait_for_log(f"unreadable record on {pipeline.settings.results_topic} partition", 10)
        assert "offset" in bridge.tail(200)
    finally:
        redis.Redis.from_url(pipeline.settings.redis_url).delete(queue)


@pytest.mark.integration
def test_a_dead_letter_from_a_newer_writer_is_listed_shown_counted_and_replayed(
    pipeline: Pipeline,
) -> None:
    settings = pipeline.settings
    # A newer worker's rebuilt request (an envelope field this version lacks) and a
    # diagnostic header this version does not know.
    value = json.dumps(
        {"v": 1, "task": "tests.app.record", "args": ["x", 1], "id": "old-id", "shard": 7}
    ).encode()
    letter = DeadLetter(
        error_class="RuntimeError",
        error_message="boom",
        origin_topic=settings.topic,
        origin_partition=0,
        origin_offset=5,
        stage="worker",
        task="tests.app.record",
        task_id="old-id",
        attempts=1,
    )
    headers = [
        *dlq_headers(letter, None),
        ("kafcel.error.code", b"E42"),
        ("kafcel.attempts.max", b"5"),
    ]
    raw = KafkaProducer({"bootstrap.servers": settings.bootstrap_servers})
    raw.produce(settings.dlq_topic, value, key=b"k", headers=headers)
    assert raw.flush(10) == 0

    (record,) = wait_until(lambda: read_dead_letters(settings), 30, "the dead letter")
    shown = record.as_dict(full=True)
    assert shown["error_class"] == "RuntimeError" and shown["task_id"] == "old-id"
    assert shown["extra"] == {"error.code": "E42", "attempts.max": "5"}
    assert find_dead_letter(settings, record.partition, record.offset).as_dict(full=True)[
        "extra"
    ] == {"error.code": "E42", "attempts.max": "5"}
    assert _dlq(settings)["by_class"] == {"RuntimeError": 1}

    report = replay_dead_letters(settings, [record], new_id=True)
    (entry,) = report.submitted
    assert entry["task_id"] != "old-id"
    (msg,) = pipeline.read(settings.topic, until=lambda got: len(got) >= 1, timeout_s=30)
    replayed = json.loads(msg.value())
    # --new-id is honoured, and what the newer writer put there travels on.
    assert replayed["id"] == entry["task_id"] and replayed["shard"] == 7
    assert replayed["args"] == ["x", 1]
    # What this version does read of it is unchanged.
    with pytest.raises(KafcelError):
        Envelope.decode(msg.value())
