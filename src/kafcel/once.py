"""The once-guard: at most one effect per task id, whatever redelivers the task.

A task id is claimed with ``SET NX`` and a lease before it runs; a finished id keeps a
``done`` marker (holding its outcome) for ``once_done_ttl_s``. A redelivered copy of a
finished task therefore re-announces the stored outcome instead of running again, and a
copy that arrives while the first one still runs backs off until the lease settles it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import redis

from .errors import BrokerError
from .results import Outcome

__all__ = ["Claim", "OnceGuard"]

_RUNNING = b"running:"
_DONE = b"done:"

# Release only our own lease: a lease that expired and was re-claimed elsewhere stays.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`OnceGuard.claim`: exactly one of the three states."""

    acquired: bool
    done: Outcome | None = None
    running_ttl_s: float | None = None


class OnceGuard:
    def __init__(
        self,
        *,
        client: redis.Redis[bytes],
        lease_s: float,
        done_ttl_s: float,
        prefix: str = "kafcel:once:",
    ) -> None:
        if lease_s <= 0 or done_ttl_s <= 0:
            raise ValueError("lease_s and done_ttl_s must be positive")
        self._redis = client
        self._lease_ms = int(lease_s * 1000)
        self._done_ms = int(done_ttl_s * 1000)
        self._prefix = prefix
        # The token makes a lease ours: pid for the log, uuid against pid reuse.
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._release = client.register_script(_RELEASE)

    def _key(self, task_id: str) -> str:
        return self._prefix + task_id

    def claim(self, task_id: str) -> Claim:
        key = self._key(task_id)
        mine = _RUNNING + self._token.encode()
        try:
            for _ in range(3):
                if self._redis.set(key, mine, nx=True, px=self._lease_ms):
                    return Claim(acquired=True)
                value = self._redis.get(key)
                if value is None:
                    continue  # expired between SET and GET: try to take it again
                if value.startswith(_DONE):
                    return _done(value)
                ttl_ms = self._redis.pttl(key)
                return Claim(acquired=False, running_ttl_s=max(ttl_ms, 0) / 1000)
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        return Claim(acquired=False, running_ttl_s=self._lease_ms / 1000)

    def release(self, task_id: str) -> None:
        """Give the lease back so a Celery retry of the same id may run."""
        try:
            self._release(keys=[self._key(task_id)], args=[_RUNNING + self._token.encode()])
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc

    def finish(self, outcome: Outcome) -> None:
        try:
            self._redis.set(self._key(outcome.task_id), _DONE + outcome.encode(), px=self._done_ms)
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc

    def finish_if_absent(self, outcome: Outcome) -> Claim | None:
        """Record ``outcome`` unless the id is already running or done; else its state."""
        key = self._key(outcome.task_id)
        try:
            if self._redis.set(key, _DONE + outcome.encode(), nx=True, px=self._done_ms):
                return None
            value = self._redis.get(key)
        except redis.RedisError as exc:
            raise BrokerError(f"once-guard Redis unavailable: {exc}") from exc
        if value is not None and value.startswith(_DONE):
            return _done(value)
        return Claim(acquired=False, running_ttl_s=self._lease_ms / 1000)


def _done(value: bytes) -> Claim:
    return Claim(acquired=False, done=Outcome.decode(value[len(_DONE) :]))
