"""The once-guard's states and the redispatcher's decisions, on the test stack's real Redis.

Each test uses its own key prefix. Worker processes are not needed here: the guard is
driven directly, as the worker wrapper drives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafcel.bridge.redispatch import BackendState, Redispatcher
from kafcel.dev import DevStack
from kafcel.guard.once import OnceGuard
from kafcel.protocol.outcome import Outcome

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture()
def client(stack: DevStack) -> Iterator[redis.Redis[bytes]]:
    c: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    yield c
    c.close()


@pytest.fixture()
def prefix(client: redis.Redis[bytes]) -> Iterator[str]:
    p = f"kafcel:test-once:{uuid.uuid4().hex[:8]}:"
    yield p
    keys = list(client.scan_iter(match=p + "*"))
    if keys:
        client.delete(*keys)


def guard(client: redis.Redis[bytes], prefix: str, lease_s: float = 30.0) -> OnceGuard:
    return OnceGuard(client=client, lease_s=lease_s, done_ttl_s=3600, prefix=prefix)


def outcome(task_id: str) -> Outcome:
    return Outcome(task_id=task_id, task="t", status="SUCCESS", result=1)


def test_one_claim_wins_and_the_others_see_it_running(
    client: redis.Redis[bytes], prefix: str
) -> None:
    a, b = guard(client, prefix), guard(client, prefix)
    first = a.claim("id")
    assert first.acquired and first.attempt == 1
    second = b.claim("id")
    assert not second.acquired and second.done is None
    assert second.running_ttl_s is not None and 0 < second.running_ttl_s <= 30


def test_done_is_final_and_carries_the_outcome(client: redis.Redis[bytes], prefix: str) -> None:
    a, b = guard(client, prefix), guard(client, prefix)
    assert a.claim("id").acquired
    final = outcome("id")
    a.finish(final)
    again = b.claim("id")
    assert not again.acquired and again.done == final
    assert b.peek(["id", "other"])["id"].done and not b.peek(["other"])["other"].live


def test_a_retry_keeps_the_id_live_and_lets_the_retry_claim_it(
    client: redis.Redis[bytes], prefix: str
) -> None:
    a, b = guard(client, prefix), guard(client, prefix)
    assert a.claim("id").acquired
    a.wait_retry("id", countdown_s=60, retries=1)
    assert a.peek(["id"])["id"].live  # the bridge must not redispatch it
    # A stray copy of the first delivery (a redispatch, a re-read record) must wait for
    # the retry rather than skip its countdown.
    assert not b.claim("id", retries=0).acquired
    retried = b.claim("id", retries=1)
    # A clean end (the retry) does not count against max_attempts.
    assert retried.acquired and retried.attempt == 1


def test_a_queued_mark_is_live_and_any_worker_may_claim_it(
    client: redis.Redis[bytes], prefix: str
) -> None:
    g = guard(client, prefix)
    g.mark_queued(["q"], ttl_s=60)
    assert g.peek(["q"])["q"].live
    assert g.claim("q").acquired
    g.finish(outcome("q"))
    g.mark_queued(["q"], ttl_s=60)  # a late mark never hides a finished task
    assert g.peek(["q"])["q"].done


def test_an_attempt_that_ends_after_its_lease_lapsed_is_not_counted_lost(
    client: redis.Redis[bytes], prefix: str
) -> None:
    slow, other = guard(client, prefix, lease_s=0.05), guard(client, prefix)
    assert slow.claim("id").acquired
    client.delete(prefix + "id")  # the lease lapsed (a long GC pause, a Redis blip)
    assert other.claim("id").attempt == 2
    slow.release("id")  # the first attempt ends cleanly after all
    other.release("id")
    assert guard(client, prefix).claim("id").attempt == 1


def test_only_the_lease_holder_writes_done(client: redis.Redis[bytes], prefix: str) -> None:
    slow, other = guard(client, prefix), guard(client, prefix)
    assert slow.claim("id").acquired
    client.delete(prefix + "id")  # slow's lease lapsed while its task still ran
    assert other.claim("id").acquired
    # The late attempt must not end the one that runs now, nor announce its outcome.
    assert slow.finish(outcome("id")) is False
    assert (client.get(prefix + "id") or b"").startswith(b"running:")
    final = outcome("id")
    assert other.finish(final) is True
    assert guard(client, prefix).claim("id").done == final


def test_finish_records_done_where_nobody_holds_the_id(
    client: redis.Redis[bytes], prefix: str
) -> None:
    g = guard(client, prefix)
    assert g.claim("id").acquired
    client.delete(prefix + "id")  # a FLUSHALL before the lease keeper re-created it
    final = outcome("id")
    assert g.finish(final) is True
    assert g.finish(final) is True  # a retried call that already went through
    assert guard(client, prefix).claim("id").done == final


def test_attempts_that_never_ended_add_up(client: redis.Redis[bytes], prefix: str) -> None:
    for expected in (1, 2, 3):
        g = guard(client, prefix, lease_s=0.05)
        claim = g.claim("id")
        assert claim.acquired and claim.attempt == expected
        # The owner dies: its lease lapses without release or finish.
        client.delete(prefix + "id")
    g = guard(client, prefix)
    assert g.claim("id").attempt == 4  # the worker wrapper refuses this one: TaskLost
    g.release("id")  # an attempt that ends cleanly is taken back off the count
    assert guard(client, prefix).claim("id").attempt == 4


def test_a_dead_owner_on_this_host_is_taken_over_at_once(
    client: redis.Redis[bytes], prefix: str
) -> None:
    code = (
        "import redis, sys; from kafcel.guard.once import OnceGuard; "
        "g = OnceGuard(client=redis.Redis.from_url(sys.argv[1]), lease_s=300, "
        "done_ttl_s=60, prefix=sys.argv[2]); print(g.claim('id').acquired)"
    )
    url = client.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/0"
    out = subprocess.run(
        [sys.executable, "-c", code, redis_url, prefix], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"  # that process is gone now, its 300 s lease is not
    claim = guard(client, prefix).claim("id")
    assert claim.acquired and claim.attempt == 2


def test_a_live_owner_is_not_taken_over(client: redis.Redis[bytes], prefix: str) -> None:
    mine = guard(client, prefix)
    assert mine.claim("id").acquired
    assert str(os.getpid()) in (client.get(prefix + "id") or b"").decode()
    assert not guard(client, prefix).claim("id").acquired


def test_renewal_recreates_a_flushed_lease_but_never_overwrites_done(
    client: redis.Redis[bytes], prefix: str
) -> None:
    g = guard(client, prefix)
    assert g.claim("a").acquired and g.claim("b").acquired
    client.delete(prefix + "a")  # as a FLUSHALL would
    g.finish(outcome("b"))
    assert g.renew(["a", "b"]) == {"a": True, "b": False}
    assert (client.get(prefix + "a") or b"").startswith(b"running:")
    assert (client.get(prefix + "b") or b"").startswith(b"done:")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STATES = st.sampled_from(["absent", "running", "retry", "done", "ready"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(states=st.lists(STATES, min_size=1, max_size=8))
def test_redispatch_sends_only_what_no_worker_holds(
    client: redis.Redis[bytes], prefix: str, states: list[str]
) -> None:
    run = uuid.uuid4().hex[:6]
    g = guard(client, prefix)
    clock = FakeClock()
    ready = {f"{run}-{i}" for i, s in enumerate(states) if s == "ready"}
    r = Redispatcher(
        after_s=10,
        guard=g,
        backend_state=lambda task_id: BackendState(
            task_id, "SUCCESS" if task_id in ready else "PENDING"
        ),
        clock=clock,
        sweep_every_s=0,
    )
    ids = [f"{run}-{i}" for i in range(len(states))]
    for task_id, state in zip(ids, states, strict=True):
        r.dispatched(task_id)
        if state in ("running", "retry", "done"):
            assert g.claim(task_id).acquired
        if state == "retry":
            g.wait_retry(task_id, 60, retries=1)
        if state == "done":
            g.finish(outcome(task_id))
    assert r.due() == ([], [])  # nothing is overdue before after_s
    clock.now += 10
    expected = [t for t, s in zip(ids, states, strict=True) if s in ("absent", "done")]
    assert r.due() == (expected, [])
    # A second redispatch of the same id waits twice as long; a task the backend holds as
    # finished but never announced is handed over as an orphan on the second look.
    clock.now += 10
    resend, orphans = r.due()
    assert resend == [] and sorted(o.task_id for o in orphans) == sorted(ready)
    clock.now += 10
    assert r.due() == (expected, [])
    r.settled(ids)
    clock.now += 1000
    assert r.due() == ([], []) and len(r) == 0


def test_data_loss_is_noticed_once_per_bridge(client: redis.Redis[bytes], prefix: str) -> None:
    a, b = guard(client, prefix), guard(client, prefix)
    assert not a.data_lost() and not b.data_lost()  # first look: nothing to compare with
    assert not a.data_lost()
    client.delete(prefix + "epoch")  # as a FLUSHALL would
    assert a.data_lost() and b.data_lost()  # each bridge notices, whoever re-created it
    assert not a.data_lost() and not b.data_lost()


def _pending_redispatcher(g: OnceGuard, clock: FakeClock) -> Redispatcher:
    """A redispatcher whose result backend knows none of its tasks finished."""
    return Redispatcher(
        after_s=100,
        guard=g,
        backend_state=lambda task_id: BackendState(task_id, "PENDING"),
        clock=clock,
        sweep_every_s=0,
    )


def test_after_data_loss_a_queued_mark_no_longer_vouches(
    client: redis.Redis[bytes], prefix: str
) -> None:
    g = guard(client, prefix)
    clock = FakeClock()
    r = _pending_redispatcher(g, clock)
    for task_id in ("queued", "running"):
        r.dispatched(task_id)
    g.mark_queued(["queued"], ttl_s=3600)  # written after the loss; its message was dropped
    assert g.claim("running").acquired  # its lease keeper re-created the lease
    r.recheck_all(after_s=5)
    clock.now += 5
    assert r.due() == (["queued"], [])


def test_a_forced_resend_that_could_not_be_sent_is_tried_again_past_its_queued_mark(
    client: redis.Redis[bytes], prefix: str
) -> None:
    """Celery's broker was still down when the re-check came due (a RabbitMQ node that
    restarted, losing a transient queue): the copy was not sent, so the queued mark still
    speaks for a message that is gone, and must not stop the next try."""
    g = guard(client, prefix)
    clock = FakeClock()
    r = _pending_redispatcher(g, clock)
    r.dispatched("lost")
    g.mark_queued(["lost"], ttl_s=3600)
    r.recheck_all(after_s=5)
    clock.now += 5
    assert r.due() == (["lost"], [])
    r.not_sent("lost")  # the broker refused the connection
    clock.now += 100
    assert r.due() == (["lost"], [])
