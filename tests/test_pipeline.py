"""End to end on the real path: Producer -> Tansu -> bridge -> Redis -> Celery worker -> results."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer
from jsonschema import Draft202012Validator

from kafcel import Envelope, Outcome, Producer
from kafcel.protocol.deadletter import parse_dlq_headers
from kafcel.protocol.schemas import load_schema

from .conftest import Pipeline, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.tansu, pytest.mark.timeout(180)]

Ledger = tuple[str, "redis.Redis[bytes]"]
# The schemas the wheel ships, checked against the records kafcel writes.
OUTCOME = Draft202012Validator(load_schema("outcome"))
DEADLETTER = Draft202012Validator(load_schema("deadletter"))


def outcomes_for(pipeline: Pipeline, n: int) -> dict[str, Outcome]:
    msgs = pipeline.read(
        pipeline.settings.results_topic,
        until=lambda got: len({Outcome.decode(m.value()).task_id for m in got}) >= n,
        timeout_s=120,
    )
    outcomes = [(m, Outcome.decode(m.value())) for m in msgs]
    # Co-partitioned: each outcome on the partition of its request, so a bridge reads
    # only the results partitions of the task partitions it owns.
    assert all(m.partition() == o.origin_partition for m, o in outcomes)
    return {o.task_id: o for _, o in outcomes}


def counts(client: redis.Redis[bytes], key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def test_n_submitted_n_outcomes_and_offsets_committed_to_the_end(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    n = 400
    pipeline.start_bridge()
    ids: dict[str, int] = {}
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            ids[producer.submit("tests.app.record", args=[name, i], key=f"user-{i % 37}")] = i

    outcomes = outcomes_for(pipeline, n)
    assert set(ids) <= set(outcomes)
    assert all(outcomes[t].status == "SUCCESS" and outcomes[t].result == ids[t] for t in ids)
    # Every record's key travels to its outcome (partitioning of downstream consumers).
    wait_until(pipeline.fully_committed, 30, "offsets committed to the end")
    effects = counts(client, f"{name}:effects")
    assert len(effects) == n and set(effects.values()) == {1}


def test_record_without_id_gets_a_deterministic_id_from_its_offset(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    from kafcel import derive_task_id

    name, _ = ledger
    pipeline.start_bridge()
    raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    delivered: list[Any] = []
    raw.produce(
        pipeline.settings.topic,
        Envelope(task="tests.app.record", args=(name, "x")).encode(),
        key=b"k",
        on_delivery=lambda err, msg: delivered.append(msg),
    )
    raw.flush(10)
    msg = delivered[0]
    expected = derive_task_id(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])
    outcomes = outcomes_for(pipeline, 1)
    assert expected in outcomes
    assert outcomes[expected].origin_offset == msg.offset()


POISON: list[tuple[str, bytes, str]] = [
    ("bad-json", b'{"v": 1, "task": "tests.app.record", "args": [', "InvalidJson"),
    ("bad-utf8", b'{"v": 1, "task": "tests.app.rec\xff\xfeord"}', "InvalidEncoding"),
    (
        "too-big",
        b'{"v":1,"task":"tests.app.record","args":["' + b"x" * 5000 + b'"]}',
        "RecordTooLarge",
    ),
    ("schema", b'{"v": 1, "task": "tests.app.record", "args": "no"}', "SchemaViolation"),
    ("unknown", Envelope(task="tests.app.nope").encode(), "TaskNotAllowed"),
    ("denied", Envelope(task="tests.app.slow", args=("n", 1, 0)).encode(), "TaskNotAllowed"),
    (
        "pickle",
        pickle.dumps({"task": "tests.app.record"}),
        "InvalidEncoding",
    ),
    ("nan", b'{"v": 1, "task": "tests.app.record", "args": [NaN]}', "InvalidJson"),
    ("dup-key", b'{"v": 1, "task": "tests.app.record", "task": "tests.app.slow"}', "InvalidJson"),
]


@pytest.mark.both_paths
def test_poison_records_go_to_the_dlq_with_their_reason_and_nothing_stalls(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start(max_record_bytes=2000, deny=("tests.app.slow",))
    raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    for label, value, _ in POISON:
        raw.produce(
            pipeline.settings.topic, value, key=b"same-key", headers=[("origin-app", label)]
        )
    raw.flush(10)
    # Good records behind the poison on the same key still run.
    with Producer(settings=pipeline.settings) as producer:
        for i in range(5):
            producer.submit("tests.app.record", args=[name, i], key="same-key")

    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= len(POISON))
    by_label = {dict(m.headers())["origin-app"].decode(): m for m in dlq}
    for label, value, error_class in POISON:
        m = by_label[label]
        h = parse_dlq_headers(m.headers())
        assert h["error.class"] == error_class, (label, h)
        assert h["error.message"]
        assert h["origin.topic"] == pipeline.settings.topic
        assert int(h["origin.offset"]) >= 0 and int(h["origin.partition"]) >= 0
        assert h["stage"] == "bridge" and h["failed_at"]
        assert m.value() == value, label  # original bytes kept for replay
        assert m.key() == b"same-key"
        DEADLETTER.validate(h)  # the shipped schema describes what kafcel writes
    wait_until(lambda: len(counts(client, f"{name}:effects")) == 5, 60, "good records to run")
    wait_until(pipeline.fully_committed, 30, "offsets committed past the poison")


@pytest.mark.both_paths
def test_retry_shapes_succeed_and_a_task_failing_for_good_lands_in_the_dlq(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start()
    with Producer(settings=pipeline.settings) as producer:
        bind_id = producer.submit("tests.app.flaky_bind", args=[name, "bind", 2], key="a")
        auto_id = producer.submit("tests.app.flaky_auto", args=[name, "auto", 2], key="b")
        fail_id = producer.submit("tests.app.always_fail", args=[name, "fail"], key="c")

    outcomes = outcomes_for(pipeline, 3)
    assert outcomes[bind_id].status == "SUCCESS" and outcomes[bind_id].retries == 2
    assert outcomes[auto_id].status == "SUCCESS" and outcomes[auto_id].retries == 2
    failed = outcomes[fail_id]
    assert failed.status == "FAILURE" and failed.error_class == "RuntimeError"
    assert failed.retries == 2
    records = pipeline.read(pipeline.settings.results_topic, until=lambda got: len(got) >= 3)
    for m in records:
        OUTCOME.validate(json.loads(m.value()))

    attempts = counts(client, f"{name}:attempts")
    assert attempts == {"bind": 3, "auto": 3, "fail": 3}
    assert counts(client, f"{name}:effects") == {"bind": 1, "auto": 1}

    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)
    h = parse_dlq_headers(dlq[0].headers())
    assert h["stage"] == "worker" and h["task_id"] == fail_id
    assert h["error.class"] == "RuntimeError" and h["attempts"] == "3"
    assert "can never be processed" in h["traceback"]
    DEADLETTER.validate(h)
    replay = Envelope.decode(dlq[0].value())
    assert replay.task == "tests.app.always_fail" and replay.id == fail_id
    assert list(replay.args) == [name, "fail"]
    wait_until(pipeline.fully_committed, 30, "offsets committed")


@pytest.mark.both_paths
def test_same_id_twice_has_one_effect(pipeline: Pipeline, ledger: Ledger) -> None:
    name, client = ledger
    pipeline.start()
    with Producer(settings=pipeline.settings) as producer:
        for _ in range(3):
            producer.submit("tests.app.record", args=[name, "once"], id=f"{name}-order-1", key="k")
    wait_until(pipeline.fully_committed, 60, "all three records settled")
    assert counts(client, f"{name}:effects") == {"once": 1}
    outcomes = pipeline.read(pipeline.settings.results_topic, until=lambda got: len(got) >= 1)
    assert {json.loads(m.value())["task_id"] for m in outcomes} == {f"{name}-order-1"}


@pytest.mark.both_paths
def test_key_ordering_keeps_each_keys_effects_in_submission_order(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start(ordering="key")
    keys, per_key = 12, 8
    with Producer(settings=pipeline.settings) as producer:
        for seq in range(per_key):
            for k in range(keys):
                # Early records sleep longer: without the gate, later ones would overtake.
                delay = 0.08 if seq % 2 == 0 else 0.0
                producer.submit(
                    "tests.app.sequenced", args=[name, f"k{k}", seq, delay], key=f"k{k}"
                )
    wait_until(lambda: len(counts(client, f"{name}:effects")) == keys * per_key, 120, "all effects")
    for k in range(keys):
        got = [int(x) for x in client.lrange(f"{name}:seq:k{k}", 0, -1)]
        assert got == list(range(per_key)), f"key k{k} ran out of order: {got}"
        client.delete(f"{name}:seq:k{k}")
    wait_until(pipeline.fully_committed, 30, "offsets committed")


@pytest.mark.both_paths
def test_countdown_is_honoured_and_an_expired_task_settles_through_the_dlq(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start()
    before = datetime.now(UTC)
    with Producer(settings=pipeline.settings) as producer:
        later = producer.submit("tests.app.record", args=[name, "later"], key="a", countdown=1.5)
        expired = producer.submit(
            "tests.app.record",
            args=[name, "expired"],
            key="b",
            expires=before - timedelta(seconds=5),
        )
    outcomes = outcomes_for(pipeline, 2)
    ran_at = datetime.fromisoformat(outcomes[later].finished_at)
    assert outcomes[later].status == "SUCCESS"
    assert (ran_at - before).total_seconds() >= 1.5
    assert outcomes[expired].status == "REVOKED"
    assert outcomes[expired].error_class == "TaskExpired"
    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)
    h = parse_dlq_headers(dlq[0].headers())
    assert h["error.class"] == "TaskExpired" and h["task_id"] == expired
    assert counts(client, f"{name}:effects") == {"later": 1}
    wait_until(pipeline.fully_committed, 30, "offsets committed")


def test_task_allowed_by_pattern_but_unknown_to_the_worker_is_dead_lettered(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start_bridge(allow=("tests.app.elsewhere_*",))
    with Producer(settings=pipeline.settings) as producer:
        missing = producer.submit("tests.app.elsewhere_only", args=[name, 1], key="k")
        after = producer.submit("tests.app.record", args=[name, "after"], key="k")
    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)
    h = parse_dlq_headers(dlq[0].headers())
    assert h["error.class"] == "TaskUnknownOnWorker" and h["task_id"] == missing
    assert Envelope.decode(dlq[0].value()).task == "tests.app.elsewhere_only"
    # The same key's next record was not held up for good.
    outcomes = outcomes_for(pipeline, 2)
    assert outcomes[after].status == "SUCCESS"
    assert counts(client, f"{name}:effects") == {"after": 1}
    wait_until(pipeline.fully_committed, 30, "offsets committed")


@pytest.mark.both_paths
def test_a_failure_near_kafkas_size_limits_still_leaves_its_dead_letter(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    """On the real path, with Kafka's own limits: a failing task whose request is 1 MiB
    (its rebuilt copy is more than the producer's message.max.bytes) and one whose
    exception message is 5 MB each leave a dead letter, and their records settle."""
    name, _ = ledger
    pipeline.start()
    payload = "x" * ((1 << 20) - 400)  # with its envelope, just under kafcel's 1 MiB limit
    # A producer's default message.max.bytes (1,000,000) is below kafcel's record limit.
    with Producer(settings=pipeline.settings, config={"message.max.bytes": 2 << 20}) as producer:
        big_request = producer.submit(
            "tests.app.fails_loudly", args=[name, "request"], kwargs={"payload": payload}, key="a"
        )
        big_message = producer.submit(
            "tests.app.fails_loudly",
            args=[name, "message"],
            kwargs={"message_bytes": 5 << 20},
            key="b",
        )
    letters = {
        parse_dlq_headers(m.headers())["task_id"]: m
        for m in pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 2)
    }
    shed = letters[big_request]
    h = parse_dlq_headers(shed.headers())
    assert shed.value() is None and int(h["value_dropped_bytes"]) > 1_000_000
    assert h["error.class"] == "ValueError" and h["stage"] == "worker"
    clipped = letters[big_message]
    h = parse_dlq_headers(clipped.headers())
    assert clipped.value() is not None and len(h["error.message"]) < 8192 + 100
    outcomes = outcomes_for(pipeline, 2)
    assert {outcomes[t].status for t in (big_request, big_message)} == {"FAILURE"}
    wait_until(pipeline.fully_committed, 60, "both records settled and committed")
