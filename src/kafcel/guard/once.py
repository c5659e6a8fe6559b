"""The once-guard: at most one effect per task id, whatever redelivers the task.

One Redis key per task id holds its state:

- ``queued:`` from the bridge's dispatch until a worker claims the id (or
  ``queued_ttl_s`` passes): a FLUSHALL or Redis restart removes it with the Celery
  message, which is how the bridge tells a lost message from a queued one;
- ``running:<owner>`` while an attempt runs; the owner renews this lease every third of
  ``lease_s`` (``lease.LeaseKeeper``), so it expires soon after its worker dies, and ends
  its own process before the lease can lapse unrenewed, so no two attempts overlap;
- ``retry:<n>:<owner>`` between a Celery retry and its next attempt (retry ``n``), for the
  retry's countdown plus one lease, so a retry waiting in a worker that then dies is
  noticed too; only that retry (or a later one) may claim the id meanwhile;
- ``done:<outcome>`` once the task finished, for ``done_ttl_s``: a redelivered copy
  re-announces the stored outcome instead of running again. A failure is first stored
  as ``done:?<outcome>`` until its dead letter is on Kafka: a copy delivered after a
  crash or a failed write writes the dead letter, then announces. Once the bridge has
  committed past the record, only a duplicate can come, and deduplicating it needs no
  more than the status: the bridge compacts the marker to ``done:=<status>:<task>``
  (tens of bytes instead of the whole outcome, its TTL kept). Only the lease's holder
  writes ``done`` (the token is compared in the same script).

A second key (a hash of owner tokens) counts attempts that started and did not end
cleanly (the worker died under them); past ``max_attempts`` the task is not run again
but dead-lettered. The bridge reads the same keys (:meth:`OnceGuard.peek`) to tell a
live task from one whose message was lost.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from ..errors import BrokerError
from ..protocol.outcome import SUCCESS, Outcome

__all__ = ["Claim", "OnceGuard", "TaskState"]

log = logging.getLogger("kafcel.once")

_QUEUED = b"queued:"
_RUNNING = b"running:"
_RETRY = b"retry:"
_DONE = b"done:"
# A failure whose dead letter is not yet on Kafka: done for every purpose but one, the
# next delivery of the id writes the dead letter before it announces the outcome.
_DEAD_LETTER_PENDING = b"?"
# A compacted marker: done:=<status>:<task>.
_COMPACT_MARK = b"="

# Take the id if nobody runs it: absent, queued by the bridge, waiting for the retry this
# request is (a retry:<n> value and a request with at least n retries), or held by an
# owner known dead. The attempts hash gets our token; an attempt that ends cleanly takes
# its token out again, so the hash counts the attempts whose worker died under them.
# Returns {1, attempts} when taken, {2, value} when done, {3, value, pttl} when busy.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
local free = v == false or string.sub(v, 1, 7) == 'queued:'
    or (ARGV[4] ~= '' and v == ARGV[4])
if not free and string.sub(v, 1, 6) == 'retry:' then
    local n = tonumber(string.match(v, '^retry:(%d+):'))
    free = n == nil or tonumber(ARGV[5]) >= n
end
if free then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    redis.call('HSET', KEYS[2], ARGV[1], 1)
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return {1, redis.call('HLEN', KEYS[2])}
end
if string.sub(v, 1, 5) == 'done:' then
    return {2, v}
end
return {3, v, redis.call('PTTL', KEYS[1])}
"""

# End our attempt cleanly: it no longer counts as lost, whoever holds the key now. The
# key changes only if it is still ours (one that expired and was re-claimed stays).
# ARGV[2] = '' deletes; otherwise the new value and its TTL.
_END = """
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""

# Each key: queued unless a worker already holds it (or it is done).
_MARK_QUEUED = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2])
end
return #KEYS
"""

# A task that will never run (expired, revoked, unknown to the worker) is done unless a
# copy of it runs or finished: absent and queued are free. Returns nil, or the value.
_FINISH_IF_FREE = """
local v = redis.call('GET', KEYS[1])
if v == false or string.sub(v, 1, 7) == 'queued:' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return nil
end
return v
"""

# The failure's dead letter is on Kafka: drop the pending flag, keep the TTL.
_DEAD_LETTER_WRITTEN = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 6) == 'done:?' then
    redis.call('SET', KEYS[1], 'done:' .. string.sub(v, 7), 'KEEPTTL')
    return 1
end
return 0
"""

# Committed: keep only what deduplication needs (the status and the task), same TTL.
_COMPACT = """
local n = 0
for _, key in ipairs(KEYS) do
    local v = redis.call('GET', key)
    local flag = string.sub(v or '', 6, 6)
    if v and string.sub(v, 1, 5) == 'done:' and flag ~= '=' and flag ~= '?' then
        local ok, o = pcall(cjson.decode, string.sub(v, 6))
        if ok and type(o) == 'table' and o.status and o.task then
            redis.call('SET', key, 'done:=' .. o.status .. ':' .. o.task, 'KEEPTTL')
            n = n + 1
        end
    end
end
return n
"""

# Renew our leases; re-create one that vanished (a FLUSHALL under a running task), so a
# redispatched copy still finds the task running instead of starting a second run.
# Returns 1 or 0 per key: still ours, or held by someone else now (our lease lapsed and
# another attempt took the id: the caller must stop its attempt at once).
_RENEW = """
local kept = {}
for i, key in ipairs(KEYS) do
    local v = redis.call('GET', key)
    if v == false or v == ARGV[1] then
        redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
        kept[i] = 1
    else
        kept[i] = 0
    end
end
return kept
"""

# Record the outcome if the id is still ours: our lease, or nobody's (it vanished with a
# FLUSHALL, or a lapsed lease nobody took; a queued mark is a copy not started). Another
# attempt's lease, retry or outcome stays: returns 0 and writes nothing. Either way our
# attempt ended cleanly, so it leaves the attempts hash. ARGV[2] already there: a retried
# call whose first try went through.
_FINISH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[2] then
    return 1
end
redis.call('HDEL', KEYS[2], ARGV[1])
if v == false or v == ARGV[1] or string.sub(v, 1, 7) == 'queued:' then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    redis.call('DEL', KEYS[2])
    return 1
end
return 0
"""


def _namespace() -> str:
    """This machine boot and pid namespace: where a pid means the same process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()[:8]
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return f"{boot}-{ns}"


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`OnceGuard.claim`: acquired (with its attempt number), done, or busy."""

    acquired: bool
    done: Outcome | None = None
    running_ttl_s: float | None = None
    attempt: int = 0
    # The failure's dead letter may not be on Kafka: write it before announcing ``done``.
    dead_letter_pending: bool = False
    # When the request that took the lease was sent (the guard's clock): the lease runs
    # from Redis's SET, later, so it lasts at least until leased_at + lease_s.
    leased_at: float = 0.0


def _done(value: bytes, task_id: str) -> Claim:
    """The claim of an id found ``done:`` (its stored outcome, and the DLQ flag)."""
    raw = value[len(_DONE) :]
    if raw.startswith(_COMPACT_MARK):
        status, _, task = raw[len(_COMPACT_MARK) :].decode("utf-8", "replace").partition(":")
        return Claim(acquired=False, done=Outcome(task_id=task_id, task=task, status=status))
    pending = raw.startswith(_DEAD_LETTER_PENDING)
    if pending:
        raw = raw[len(_DEAD_LETTER_PENDING) :]
    return Claim(acquired=False, done=Outcome.decode(raw), dead_letter_pending=pending)


@dataclass(frozen=True)
class TaskState:
    """What the once-guard knows of a task id, as the bridge sees it."""

    live: bool  # queued, running or waiting for a retry, under a TTL not yet expired
    done: bool
    queued: bool = False  # live only by the bridge's mark: no worker has claimed it


class OnceGuard:
    def __init__(
        self,
        *,
        client: redis.Redis[bytes],
        lease_s: float,
        done_ttl_s: float,
        prefix: str = "kafcel:once:",
        renew_client: redis.Redis[bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``renew_client`` carries the lease keeper's renewals (default: ``client``): a
        connection of their own, so a renewal never waits behind a task's call, with its
        own timeouts and no retries. ``clock`` dates leases (monotonic seconds)."""
        if lease_s <= 0 or done_ttl_s <= 0:
            raise ValueError("lease_s and done_ttl_s must be positive")
        self._redis = client
        self.clock = clock
        self.lease_s = float(lease_s)
        self._lease_ms = int(lease_s * 1000)
        self._done_ms = int(done_ttl_s * 1000)
        self._prefix = prefix
        # A claimer in the same pid namespace of the same boot can tell from the pid that
        # an owner is dead (hostnames alone repeat across containers); the nonce guards
        # against pid reuse.
        self._host = f"{socket.gethostname()}/{_namespace()}"
        self._token = f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._mine = _RUNNING + self._token.encode()
        self._claim = client.register_script(_CLAIM)
        self._end = client.register_script(_END)
        self._renew = (renew_client or client).register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._finish_if_free = client.register_script(_FINISH_IF_FREE)
        self._mark_queued = client.register_script(_MARK_QUEUED)
        self._dead_letter_written = client.register_script(_DEAD_LETTER_WRITTEN)
        self._compact = client.register_script(_COMPACT)
        self._epoch: str | None = None

    def _key(self, task_id: str) -> str:
        return self._prefix + task_id

    def _attempts_key(self, task_id: str) -> str:
        return f"{self._prefix}{task_id}:attempts"

    def claim(self, task_id: str, *, retries: int = 0) -> Claim:
        """Try to run ``task_id``; ``retries`` is the request's Celery retry count."""
        keys = [self._key(task_id), self._attempts_key(task_id)]
        dead = b""
        try:
            for _ in range(2):
                args = [self._mine, self._lease_ms, self._done_ms, dead, retries]
                sent = self.clock()
                reply = self._claim(keys=keys, args=args)
                if int(reply[0]) == 1:
                    return Claim(acquired=True, attempt=int(reply[1]), leased_at=sent)
                if int(reply[0]) == 2:
                    return _done(bytes(reply[1]), task_id)
                value, ttl_ms = bytes(reply[1]), int(reply[2])
                if not self._owner_dead(value):
                    return Claim(acquired=False, running_ttl_s=max(ttl_ms, 0) / 1000)
                # Its worker process is gone (prefork child killed): no need to wait for
                # the lease to run out.
                dead = value
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        return Claim(acquired=False, running_ttl_s=self.lease_s)

    def _owner_dead(self, value: bytes) -> bool:
        if not value.startswith(_RUNNING):
            return False
        parts = value[len(_RUNNING) :].decode("utf-8", "replace").rsplit(":", 2)
        if len(parts) != 3:
            return False
        host, pid_text, _ = parts
        if host != self._host or not pid_text.isdigit() or host.endswith("/unknown"):
            return False
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def release(self, task_id: str) -> None:
        """End our attempt without an outcome, so another delivery of the id may run."""
        self._finish_attempt(task_id, b"", 0)

    def hand_over(self, task_id: str, ttl_s: float) -> None:
        """Our attempt ended by handing the id to another message (``self.replace()``):
        queued, as the bridge marks a dispatched id, so the redispatch check sees it live
        and the replacement may claim it."""
        self._finish_attempt(task_id, _QUEUED, int(ttl_s * 1000))

    def wait_retry(self, task_id: str, countdown_s: float, *, retries: int) -> None:
        """Our attempt asked Celery for retry number ``retries``: hold the id for it.

        Only a request with at least that many retries may claim the id meanwhile; a stray
        copy (a redispatch, a re-read record) waits, so the countdown is kept.
        """
        ttl_ms = int(max(countdown_s, 0) * 1000) + self._lease_ms
        value = _RETRY + f"{retries}:".encode() + self._token.encode()
        self._finish_attempt(task_id, value, ttl_ms)

    def _finish_attempt(self, task_id: str, value: bytes, ttl_ms: int) -> None:
        keys = [self._key(task_id), self._attempts_key(task_id)]
        try:
            self._end(keys=keys, args=[self._mine, value, ttl_ms])
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc

    def mark_queued(self, task_ids: list[str], ttl_s: float) -> None:
        """The bridge has sent these ids to Celery: they are live until a worker claims
        them or ``ttl_s`` passes. A FLUSHALL or a Redis restart takes the marks with the
        queued messages, which is how the bridge learns those messages are gone."""
        if not task_ids:
            return
        try:
            # One script call per batch: a pipeline of SETs costs the bridge more client
            # time than the round trip it saves.
            self._mark_queued(
                keys=[self._key(task_id) for task_id in task_ids],
                args=[_QUEUED, int(ttl_s * 1000)],
            )
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc

    def finish(self, outcome: Outcome, *, dead_letter_pending: bool = False) -> bool:
        """Record ``outcome`` as the id's final state if the id is still ours; with
        ``dead_letter_pending`` until :meth:`dead_letter_written` (a failure whose dead
        letter is still to be written).

        False: another attempt holds the id now (our lease lapsed and it was taken): nothing
        is written, and our outcome must not be announced; the holder announces its own.
        """
        flag = _DEAD_LETTER_PENDING if dead_letter_pending else b""
        keys = [self._key(outcome.task_id), self._attempts_key(outcome.task_id)]
        try:
            done = self._finish(
                keys=keys, args=[self._mine, _DONE + flag + outcome.encode(), self._done_ms]
            )
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        return int(done) == 1

    def finish_over(self, outcome: Outcome, *, dead_letter_pending: bool = False) -> bool:
        """Record ``outcome`` over the attempt holding the id if that attempt's process is
        gone (``revoke(terminate=True)`` or a hard time limit killed it): its lease would
        otherwise block the id until it lapses. False, writing nothing, if a live attempt
        holds it or none does. ``dead_letter_pending`` as for :meth:`finish`."""
        flag = _DEAD_LETTER_PENDING if dead_letter_pending else b""
        key = self._key(outcome.task_id)
        try:
            value = self._redis.get(key)
            if value is None or not self._owner_dead(value):
                return False
            keys = [key, self._attempts_key(outcome.task_id)]
            done = self._finish(
                keys=keys, args=[value, _DONE + flag + outcome.encode(), self._done_ms]
            )
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        return int(done) == 1

    def dead_letter_written(self, task_id: str) -> None:
        """The failed ``task_id``'s dead letter is on Kafka: its next delivery only
        re-announces the outcome."""
        try:
            self._dead_letter_written(keys=[self._key(task_id)])
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc

    def compact(self, task_ids: list[str]) -> int:
        """Their records are committed: shrink their done markers to what deduplication
        needs. Ids not done are left alone; returns how many were compacted."""
        if not task_ids:
            return 0
        try:
            return int(self._compact(keys=[self._key(t) for t in task_ids]))
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc

    def finish_if_absent(
        self, outcome: Outcome, *, dead_letter_pending: bool = False
    ) -> Claim | None:
        """Record ``outcome`` unless the id runs or is done (only queued); else its state.
        ``dead_letter_pending`` as for :meth:`finish`."""
        flag = _DEAD_LETTER_PENDING if dead_letter_pending else b""
        try:
            value = self._finish_if_free(
                keys=[self._key(outcome.task_id)],
                args=[_DONE + flag + outcome.encode(), self._done_ms],
            )
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        if value is None:
            return None
        value = bytes(value)
        if value.startswith(_DONE):
            return _done(value, outcome.task_id)
        return Claim(acquired=False, running_ttl_s=self.lease_s)

    def forget(self, task_id: str) -> str:
        """Let ``task_id`` run again after it ended in failure (a replay with the same id).

        Only a final failure (or a revoke) is forgotten: a success stays, so a replay can
        never repeat an effect that already happened, and a queued, running or retrying id
        is left to its owner. Returns ``"forgotten"`` (it may run now), ``"succeeded"`` or
        ``"in progress"``.
        """
        key, attempts = self._key(task_id), self._attempts_key(task_id)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.watch(key)
                value: bytes | None = pipe.get(key)  # type: ignore[assignment]
                if value is not None:
                    if not value.startswith(_DONE):
                        return "in progress"
                    done = _done(value, task_id).done
                    if done is not None and done.status == SUCCESS:
                        return "succeeded"
                pipe.multi()
                pipe.delete(key, attempts)
                pipe.execute()
        except redis.WatchError:
            return "in progress"  # the id changed state while we looked: someone has it
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        return "forgotten"

    def renew(self, task_ids: Iterable[str]) -> dict[str, bool]:
        """Renew our leases of ``task_ids``: for each, True if it is still ours, False if
        another attempt holds the id now."""
        ids = list(task_ids)
        if not ids:
            return {}
        try:
            kept = self._renew(keys=[self._key(t) for t in ids], args=[self._mine, self._lease_ms])
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        return {task_id: int(k) == 1 for task_id, k in zip(ids, kept, strict=True)}

    def peek(self, task_ids: list[str]) -> dict[str, TaskState]:
        """The state of each id (absent ids are neither live nor done)."""
        if not task_ids:
            return {}
        try:
            values = self._redis.mget([self._key(t) for t in task_ids])
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        states = {}
        for task_id, value in zip(task_ids, values, strict=True):
            done = value is not None and value.startswith(_DONE)
            queued = value is not None and value.startswith(_QUEUED)
            states[task_id] = TaskState(
                live=value is not None and not done, done=done, queued=queued
            )
        return states

    def data_lost(self) -> bool:
        """True once after Redis lost its data (FLUSHALL, restart without persistence).

        A sentinel key is set on the first call; finding it gone later means everything
        else went with it: Celery's queued messages, kombu's queue bindings, our marks.
        """
        key = self._prefix + "epoch"
        try:
            if self._epoch is None:
                # First look: adopt the sentinel as found (or set it); nothing to compare.
                self._redis.set(key, uuid.uuid4().hex, nx=True)
                current = self._redis.get(key)
                self._epoch = current.decode() if current is not None else None
                return False
            self._redis.set(key, uuid.uuid4().hex, nx=True)
            current = self._redis.get(key)
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        value = current.decode() if current is not None else None
        if value == self._epoch:
            return False
        # Gone and re-created (by us or another bridge): Redis lost its data since.
        self._epoch = value
        return True
