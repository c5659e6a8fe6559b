"""The pure parts of scheduled tasks and dead-letter retries: the parked index, counting a
parked task once it falls due, the markers' per-partition cap, and what the parker and the
dead-letter writer do when Kafka refuses (on tests/bridge_harness.py's fake producer)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import Message

from kafcel.bridge.markers import CommittedMarkers
from kafcel.bridge.schedule import Parked, ParkedIndex, Parker
from kafcel.bridge.tracker import OffsetTracker
from kafcel.deadletter import DeadLetterWriter
from kafcel.kafka.delivery import Writes
from kafcel.protocol.deadletter import DeadLetter

from .bridge_harness import FakeKafka, FakeProducer

pytestmark = pytest.mark.timeout(30)

TP = ("t.scheduled", 0)


def test_the_index_hands_out_by_due_time_within_a_limit() -> None:
    index = ParkedIndex()
    for offset, due in enumerate([50, 10, 30, 20]):
        index.add(0, offset, due, parked_ms=1)
    assert [e[:2] for e in index.due(30, limit=2)] == [(0, 1), (0, 3)]
    assert [e[:2] for e in index.due(30, limit=5)] == [(0, 2)]
    assert len(index) == 1 and index.due(49, limit=5) == []


def test_the_oldest_parked_tasks_are_found_for_parking_anew() -> None:
    """The head of a partition that waited long holds its commit: it is what is parked
    anew; one handed out since is skipped, not parked twice."""
    index = ParkedIndex()
    index.add(0, 0, due_ms=10_000, parked_ms=100)
    index.add(0, 1, due_ms=20, parked_ms=110)
    index.add(0, 2, due_ms=10_000, parked_ms=900)
    index.add(1, 0, due_ms=10_000, parked_ms=120)
    assert [e[:2] for e in index.due(50, limit=10)] == [(0, 1)]
    stale = index.parked_before(500, limit=10)
    assert sorted(e[:2] for e in stale) == [(0, 0), (1, 0)]
    assert index.due(20_000, limit=10) == [(0, 2, 10_000, 900)], "stale ones left the heap"


def test_a_parked_task_counts_in_flight_once_it_falls_due() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 0, counted=False)
    tracker.add(TP, 1, counted=False)
    assert tracker.in_flight() == 0 and tracker.in_flight(TP) == 2
    tracker.count(TP, 1, 1000)
    tracker.count(TP, 1, 1000)  # once only
    assert (tracker.in_flight(), tracker.in_flight_bytes()) == (1, 1000)
    tracker.settle(TP, 1)
    assert (tracker.in_flight(), tracker.in_flight_bytes()) == (0, 0)
    tracker.count(TP, 0, 10)
    tracker.revoke(TP)
    assert (tracker.in_flight(), tracker.in_flight_bytes()) == (0, 0)


def test_one_stuck_partition_does_not_stop_the_others_markers_shrinking() -> None:
    markers = CommittedMarkers(limit_per_partition=2)
    for offset in range(5):
        markers.settled(("a", 0), offset + 1, f"a{offset}")
    markers.settled(("b", 0), 0, "b0")
    markers.committed(("b", 0), 1)
    markers.committed(("a", 0), 10)
    assert sorted(markers.take()) == ["a0", "a1", "b0"]


def _msg(value: bytes) -> Message:
    return Message(topic="t", partition=0, offset=3, key=b"k", value=value)


def _parked() -> Parked:
    return Parked(
        task_id="id",
        topic="t",
        partition=0,
        offset=3,
        timestamp_ms=1,
        eta=datetime(2030, 1, 1, tzinfo=UTC),
    )


def test_a_record_too_large_to_park_is_refused_not_retried_forever() -> None:
    producer = FakeProducer(FakeKafka(), {"message.max.bytes": 1000})
    parker = Parker(writes=Writes(producer=producer), topic="t.scheduled")  # type: ignore[arg-type]
    said: list[str] = []
    kw = {"wanted": lambda: True, "written": lambda: said.append("written")}
    parker.park(_msg(b"x" * 2000), _parked(), refused=lambda: said.append("local"), **kw)
    parker.park(_msg(b"x" * 10), _parked(), refused=lambda: said.append("broker"), **kw)
    producer.fail(RdKafkaError.MSG_SIZE_TOO_LARGE)  # the topic takes less than the producer
    producer.poll()
    assert said == ["local", "broker"] and producer.waiting == []


def test_failed_writes_are_retried_only_while_still_wanted() -> None:
    producer = FakeProducer(FakeKafka(), {})
    writes = Writes(producer=producer)  # type: ignore[arg-type]
    writer = DeadLetterWriter(writes=writes, topic="t.dlq", config={})
    letter = DeadLetter(
        error_class="X",
        error_message="m",
        origin_topic="t",
        origin_partition=0,
        origin_offset=1,
        stage="bridge",
    )
    wanted = [True]
    writer.write(
        letter,
        value=b"v",
        key=None,
        headers=[],
        on_written=lambda: None,
        wanted=lambda: wanted[0],
    )
    producer.fail(RdKafkaError._MSG_TIMED_OUT)
    producer.poll()
    wanted[0] = False  # the partition moved to another bridge: its dead letter is theirs
    writes.retry_due(now=True)
    assert producer.waiting == []
