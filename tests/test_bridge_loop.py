"""The bridge loop, step by step, on fakes (tests/bridge_harness.py): interleavings of
rebalances, deliveries and outcomes that real-stack tests could only hit by chance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from celery import Celery

from kafcel.dev import DevStack
from kafcel.protocol.outcome import SUCCESS, Outcome
from kafcel.settings import Settings

from .bridge_harness import BridgeHarness, envelope

pytestmark = pytest.mark.timeout(60)

app = Celery("harness")


@app.task(name="harness.echo")
def echo(x: object) -> object:
    return x


@pytest.fixture()
def harness(stack: DevStack) -> Iterator[BridgeHarness]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers="fake:9092",
        redis_url=stack.redis_url,
        topic=f"loop-{run}",
        group_id=f"loop-{run}",
    )
    yield BridgeHarness(app=app, settings=settings)


def test_stale_dlq_ack_after_reassign_settles_nothing(harness: BridgeHarness) -> None:
    """A DLQ acknowledgement from before a revoke and re-assign must neither settle the
    re-read record nor free its key for the next one."""
    h = harness
    tp = (h.settings.topic, 0)
    h.kafka.append(tp, envelope("harness.echo", 1), key=b"k")  # offset 0
    h.kafka.append(tp, envelope("harness.echo", 2), key=b"k")  # offset 1, same key
    refused = {0}
    h.publisher.refuse = lambda item: "no" if item.offset in refused else None
    h.c.assign([tp])
    h.turn()
    assert len(h.p.waiting) == 1, "record 0 is on its way to the DLQ"
    assert h.publisher.offsets() == []

    # The partition moves away and back before the DLQ write is acknowledged.
    refused.clear()
    h.c.revoke([tp])
    h.c.assign([tp])
    h.turn()
    assert h.publisher.offsets() == [0], "record 0 re-read and dispatched; 1 waits"

    h.p.ack()  # the old assignment's DLQ write lands now
    h.turn(2)
    assert h.in_flight(tp) == 2, "the re-dispatched record 0 is still unsettled"
    assert h.publisher.offsets() == [0], "record 1 must wait for record 0's outcome"
    assert h.kafka.committed.get(tp, 0) == 0


def test_outcome_for_an_earlier_assignment_settles_nothing(harness: BridgeHarness) -> None:
    """An outcome answering the dispatch of an earlier assignment leaves the record read
    again pending; the outcome re-announced under the current fence settles it."""
    h = harness
    tp = (h.settings.topic, 0)
    h.kafka.append(tp, envelope("harness.echo", 1), key=b"k")
    h.kafka.append(tp, envelope("harness.echo", 2), key=b"k")
    h.c.assign([tp])
    h.turn()
    h.c.revoke([tp])
    h.c.assign([tp])
    h.turn()
    old, new = h.publisher.sent
    assert (old.task_id, old.offset) == (new.task_id, new.offset) and old.fence != new.fence

    h.outcomes.queue.append(
        Outcome(task_id=old.task_id, task="harness.echo", status=SUCCESS, fence=old.fence)
    )
    h.turn()
    assert h.in_flight(tp) == 2 and h.publisher.offsets() == [0, 0]

    h.outcomes.queue.append(
        Outcome(
            task_id=new.task_id,
            task="harness.echo",
            status=SUCCESS,
            fence=new.fence,
            duplicate=True,
        )
    )
    h.turn()
    assert h.in_flight(tp) == 1 and h.publisher.offsets() == [0, 0, 1]


def test_outcome_without_a_fence_still_settles(harness: BridgeHarness) -> None:
    """Workers of an older version send no fence: their outcomes settle as before."""
    h = harness
    tp = (h.settings.topic, 0)
    h.kafka.append(tp, envelope("harness.echo", 1), key=b"k")
    h.c.assign([tp])
    h.turn()
    (item,) = h.publisher.sent
    h.outcomes.queue.append(Outcome(task_id=item.task_id, task="harness.echo", status=SUCCESS))
    h.turn()
    assert h.in_flight(tp) == 0
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed[tp] == 1


@app.task(name="harness.misrouted")
def misrouted(x: object) -> object:
    return x


def test_a_routing_error_holds_its_records_and_dead_letters_nothing(
    harness: BridgeHarness,
) -> None:
    """One task name routed to a queue the app lacks: its records wait (their key too),
    other tasks flow, nothing reaches the DLQ, and the records go once the route is fixed."""
    h = harness
    tp = (h.settings.topic, 0)
    h.kafka.append(tp, envelope("harness.misrouted", 1), key=b"a")  # 0
    h.kafka.append(tp, envelope("harness.echo", 2), key=b"b")  # 1
    h.kafka.append(tp, envelope("harness.misrouted", 3), key=b"a")  # 2, behind 0
    reason = "Celery could not take the task: QueueNotFound: 'nowhere'"
    h.publisher.hold = lambda item: reason if item.envelope.task == "harness.misrouted" else None
    h.c.assign([tp])
    h.turn()
    assert h.publisher.offsets() == [1]
    (echo,) = h.publisher.sent
    h.answer(echo)
    for _ in range(5):
        h.now += 1.0
        h.turn()
    assert h.publisher.offsets() == [1] and h.dlq() == []
    assert h.bridge.stats.held == 1 and h.bridge._held.partitions() == {tp: reason}
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed[tp] == 0, "the held record keeps the commit"

    h.publisher.hold = lambda item: None  # the route is fixed
    h.now += 60
    h.turn()
    assert h.publisher.offsets() == [1, 0]
    h.answer(h.publisher.sent[-1])
    h.turn()
    assert h.publisher.offsets() == [1, 0, 2], "the key's next record after it"
    h.answer(h.publisher.sent[-1])
    h.turn()
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed[tp] == 3 and h.dlq() == [] and h.bridge.stats.held == 0


def test_the_broker_down_for_longer_than_the_poll_interval(harness: BridgeHarness) -> None:
    """While Celery's broker is down the loop keeps polling Kafka (its group membership)
    with its partitions paused, and settles outcomes; it probes the broker with backoff
    instead of publishing."""
    h = harness
    tp = (h.settings.topic, 0)
    h.kafka.append(tp, envelope("harness.echo", 1), key=b"a")
    h.c.assign([tp])
    h.turn()
    (first,) = h.publisher.sent
    h.publisher.down = True
    for n in range(2, 6):
        h.kafka.append(tp, envelope("harness.echo", n), key=str(n).encode())
    h.turn()
    assert h.bridge.stats.held == 4 and h.dlq() == []
    round_trips, polls = h.publisher.round_trips, h.c.polls
    h.answer(first)  # a worker finishes a task sent before the outage
    for n in range(400):  # 400 turns over 10 minutes: past max.poll.interval.ms (5 min)
        if n == 200:  # a record arriving during the outage waits too, without a publish
            h.kafka.append(tp, envelope("harness.echo", 6), key=b"6")
        h.now += 1.5
        h.turn()
    assert h.c.polls >= polls + 400
    assert h.publisher.round_trips == round_trips, "no publish while the probe fails"
    assert h.publisher.probes < 40, "probes back off"
    # The outcome read during the outage settled its record; nothing could be dispatched,
    # so the partitions wait, paused far below max_in_flight, and the record that arrived
    # meanwhile waits in Kafka.
    assert h.in_flight(tp) == 4
    assert h.bridge.stats.paused and h.c._paused == {tp}

    h.publisher.down = False
    h.now += 60
    h.turn()
    h.turn()
    assert sorted(h.publisher.offsets()) == [0, 1, 2, 3, 4, 5] and h.dlq() == []
    assert not h.bridge.stats.paused and not h.c._paused


def test_memory_is_bounded_in_bytes(stack: DevStack) -> None:
    """1 MiB records against a 3 MiB budget: the bridge takes records up to the budget
    (past it by the one that crosses it), holds one copy of each, pauses, and reads the
    rest again as memory frees; nothing is skipped."""
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers="fake:9092",
        redis_url=stack.redis_url,
        topic=f"loop-{run}",
        max_in_flight_bytes=3 << 20,
    )
    h = BridgeHarness(app=app, settings=settings)
    tp = (settings.topic, 0)
    blob = "x" * ((1 << 20) - 256)  # with its envelope, just under the 1 MiB record limit
    for i in range(10):
        h.kafka.append(tp, envelope("harness.echo", blob), key=f"k{i}".encode())
    h.c.assign([tp])
    settled, paused = 0, False
    for _ in range(100):
        if settled == 10:
            break
        h.turn()
        assert h.bridge._tracker.in_flight_bytes() < (3 << 20) + (1 << 20) + 4096
        paused = paused or h.bridge.stats.paused
        for item in h.publisher.sent[settled:]:
            # One copy: the payload stays in the raw record, not in a decoded envelope.
            assert item.envelope.args == () and item.payload().args == (blob,)
            h.answer(item)
            settled += 1
    h.turn()
    assert h.publisher.offsets() == list(range(10)) and paused
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed[tp] == 10


def test_relative_times_count_from_the_records_timestamp(harness: BridgeHarness) -> None:
    """A countdown or a relative expiry counts from the submission (the record's
    timestamp), not from whenever the bridge got to the record."""
    h = harness
    tp = (h.settings.topic, 0)
    submitted_ms = int(time.time() * 1000) - 50_000  # submitted 50 s ago
    h.kafka.append(tp, envelope("harness.echo", 1, countdown=60), timestamp_ms=submitted_ms)
    h.kafka.append(tp, envelope("harness.echo", 2, expires=30), timestamp_ms=submitted_ms)
    h.c.assign([tp])
    h.turn()
    later, expiring = h.publisher.sent
    now = datetime.now(UTC)
    assert later.eta is not None and 8 < (later.eta - now).total_seconds() < 12
    assert expiring.expires is not None and expiring.expires < now


def test_a_timestamp_no_calendar_holds_counts_as_now(harness: BridgeHarness) -> None:
    """A producer writing microseconds as milliseconds (year 55,000) must not crash the
    bridge on every restart: the countdown counts from now."""
    h = harness
    tp = (h.settings.topic, 0)
    h.kafka.append(tp, envelope("harness.echo", 1, countdown=5), timestamp_ms=1_700_000_000_000_000)
    h.kafka.append(tp, envelope("harness.echo", 2))
    h.c.assign([tp])
    h.turn()
    first, second = h.publisher.sent
    assert first.eta is not None and 3 < (first.eta - datetime.now(UTC)).total_seconds() < 6
    assert second.offset == 1


def test_a_record_fetched_before_its_partition_was_revoked_is_dropped(
    harness: BridgeHarness,
) -> None:
    """librdkafka may run the revoke inside the second consume() of a loop turn, after
    the first returned records of that partition: handling them anyway would track the
    partition afresh and, when it comes back, skip the records re-read below them."""
    h = harness
    tp = (h.settings.topic, 0)
    for i in range(6):
        h.kafka.append(tp, envelope("harness.echo", i), key=f"k{i}".encode())
    h.c.assign([tp])
    h.turn()
    for item in h.publisher.sent[:3]:
        h.answer(item)
    h.turn()
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed[tp] == 3
    h.kafka.append(tp, envelope("harness.echo", 6), key=b"k6")
    h.c.revoke([tp], after_polls=1)  # in the turn's second consume()
    h.turn()
    assert 6 not in h.publisher.offsets(), "fetched before the revoke: not ours any more"
    h.c.assign([tp])
    h.turn()
    assert h.publisher.offsets()[6:] == [3, 4, 5, 6], "re-read from the commit, none skipped"


@pytest.mark.parametrize("how", ["lost", "revoked"])
def test_partitions_taken_while_paused_are_consumed_again_when_they_come_back(
    harness: BridgeHarness, how: str
) -> None:
    """Paused at max_in_flight, then the session times out (a broker holding the group
    coordinator was killed): the partitions are lost, the in-flight records forgotten,
    and the group hands the same partitions back. librdkafka keeps their pause across
    that, so a bridge that only resumes what it owns at the time would never fetch
    them again: a stalled partition with lag and no error (found by `leader-kill`)."""
    limit = 10
    h = BridgeHarness(app=app, settings=harness.settings.replace(max_in_flight=limit))
    tp = (h.settings.topic, 0)
    for i in range(limit + 20):
        h.kafka.append(tp, envelope("harness.echo", i), key=f"k{i}".encode())
    h.c.assign([tp])
    h.turn(3)
    assert h.bridge._offsets.paused, "max_in_flight reached: the bridge pauses"
    (h.c.lose if how == "lost" else h.c.revoke)([tp])
    h.turn()
    h.c.assign([tp])
    answered = 0
    for _ in range(20):
        h.turn()
        for item in h.publisher.sent[answered:]:
            h.answer(item)
        answered = len(h.publisher.sent)
    assert max(h.publisher.offsets()) == limit + 19, "the partition is read to its end"


def test_a_shutdown_commit_met_by_a_rebalance_is_sent_again_once_rejoined(
    harness: BridgeHarness,
) -> None:
    """SIGTERM while another bridge joins (the cooperative protocol's second round): the
    group refuses the shutdown commit until this member has rejoined; the settled offsets
    must still be committed, not left for the next owner to read again."""
    h = harness
    tp = (h.settings.topic, 0)
    for i in range(3):
        h.kafka.append(tp, envelope("harness.echo", i), key=f"k{i}".encode())
    h.c.assign([tp])
    h.turn()
    for item in h.publisher.sent:
        h.answer(item)
    h.turn()
    assert h.in_flight(tp) == 0
    h.c.rebalancing_until_poll = h.c.polls + 5
    h.bridge._drain()
    assert h.kafka.committed[tp] == 3
    assert h.c.closed
