"""The bridge loop, step by step, on fakes (tests/bridge_harness.py): interleavings of
rebalances, deliveries and outcomes that real-stack tests could only hit by chance."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from kafcel.devstack import DevStack
from kafcel.results import SUCCESS, Outcome
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
