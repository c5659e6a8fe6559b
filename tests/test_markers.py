"""Done markers shrink to what deduplication needs once their record is committed.

A finished task's marker first holds its whole outcome (a copy delivered before the
commit re-announces it, result included); after the commit only a duplicate can come
(a re-read, a stray Celery copy, a resubmitted id), and it needs to know the id is done,
with which status.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from kafcel.dev import DevStack
from kafcel.guard.once import OnceGuard
from kafcel.protocol.outcome import FAILURE, SUCCESS, Outcome
from kafcel.settings import Settings

from .bridge_harness import BridgeHarness, envelope
from .test_bridge_loop import app

pytestmark = [pytest.mark.timeout(60)]


def test_a_compacted_marker_still_deduplicates(stack: DevStack) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    prefix = f"kafcel:test-markers:{uuid.uuid4().hex[:8]}:"
    guard = OnceGuard(client=client, lease_s=30, done_ttl_s=3600, prefix=prefix)
    big = Outcome(
        task_id="a", task="shop.order", status=SUCCESS, result="r" * 100_000, headers={"h": 1}
    )
    failed = Outcome(task_id="b", task="shop.pay", status=FAILURE, error_message="no")
    for outcome in (big, failed):
        assert guard.claim(outcome.task_id).acquired
    guard.finish(big)
    guard.finish(failed, dead_letter_pending=True)
    assert len(client.get(prefix + "a") or b"") > 100_000

    # A failure whose dead letter is still owed stays whole: its next copy must write it.
    assert guard.compact(["a", "b", "never-ran"]) == 1
    assert guard.claim("b").dead_letter_pending
    guard.dead_letter_written("b")
    assert guard.compact(["b"]) == 1
    assert len(client.get(prefix + "a") or b"") < 64
    assert 3500 < client.ttl(prefix + "a") <= 3600, "the marker keeps its lifetime"
    again = guard.claim("a")
    assert not again.acquired and again.done is not None
    assert (again.done.task_id, again.done.task, again.done.status) == ("a", "shop.order", SUCCESS)
    other = guard.claim("b")
    assert other.done is not None and other.done.status == FAILURE
    assert not other.dead_letter_pending, "committed: its dead letter is on Kafka"
    assert guard.forget("a") == "succeeded" and guard.forget("b") == "forgotten"
    assert client.get(prefix + "never-ran") is None
    client.delete(prefix + "a")


def test_the_bridge_compacts_the_markers_of_what_it_committed(stack: DevStack) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    run = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers="fake:9092", redis_url=stack.redis_url, topic=run)
    h = BridgeHarness(app=app, settings=settings)
    guard = OnceGuard(client=client, lease_s=30, done_ttl_s=3600)
    tp = (run, 0)
    for i in range(3):
        h.kafka.append(tp, envelope("harness.echo", i), key=f"k{i}".encode())
    h.c.assign([tp])
    h.turn()
    first, second, third = h.publisher.sent
    for item in (first, third):  # the workers finish two of them
        guard.finish(
            Outcome(task_id=item.task_id, task="harness.echo", status=SUCCESS, result="x" * 500)
        )
        h.answer(item)
    h.turn()
    h.bridge._commit(asynchronous=False)
    h.turn()
    assert h.kafka.committed[tp] == 1
    size = {i.task_id: len(client.get(f"kafcel:once:{i.task_id}") or b"") for i in h.publisher.sent}
    assert size[first.task_id] < 64, "committed: compacted"
    assert size[third.task_id] > 500, "settled but not committed past: kept whole"
    assert size[second.task_id] > 0  # the bridge's queued mark, untouched

    guard.finish(Outcome(task_id=second.task_id, task="harness.echo", status=SUCCESS))
    h.answer(second)
    h.turn()
    h.bridge._commit(asynchronous=True)  # acknowledged in the next consume()
    h.turn(2)
    assert h.kafka.committed[tp] == 3
    assert all(len(client.get(f"kafcel:once:{i.task_id}") or b"") < 64 for i in h.publisher.sent)
    client.delete(*(f"kafcel:once:{i.task_id}" for i in h.publisher.sent))
