"""The chaos ledger: an independent record of every task effect, on a Redis of its own.

It lives apart from Celery's broker and the once-guard, so flushing or restarting those
does not touch the evidence. Per run it keeps:

- ``applied``: order id -> effects applied through an inbox keyed by the task id, the
  pattern docs/reliability.md prescribes for a task's external side effect: above one
  per order is a **duplicate effect**;
- ``runs``: order id -> task bodies that reached the effect (every completion counts):
  above one per order is a **rerun**, what a task *without* that inbox would have done
  twice (a worker killed between the effect and the once-guard's done marker);
- ``last``: key -> highest sequence number applied, and ``ooo``: keys that saw a lower
  sequence after a higher one (an out-of-order effect);
- ``submits`` and ``effects``: the histories :mod:`.history` checks afterwards, apart
  from the counters above.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from .history import FAIL, Effect, History, check

__all__ = ["Ledger", "LedgerCounts"]

_APPLY = """
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
    return 0
end
local effects = redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('RPUSH', KEYS[6], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
local seq = tonumber(ARGV[4])
-- A duplicate effect is counted as one, not also as an ordering fault (as history.py).
if seq >= 0 and effects == 1 then
    local last = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '-1')
    if seq < last then
        redis.call('SADD', KEYS[5], ARGV[3])
    else
        redis.call('HSET', KEYS[4], ARGV[3], seq)
    end
end
return 1
"""

_SUFFIXES = ("runs", "inbox", "applied", "last", "ooo", "effects", "attempts", "submits", "failed")


@dataclass(frozen=True)
class LedgerCounts:
    applied_orders: int  # orders whose effect happened at least once
    duplicates: int  # effects beyond one per order, through the inbox
    reruns: int  # task bodies completed beyond one per order
    out_of_order: int  # keys that saw a lower sequence after a higher one
    applied_ids: frozenset[str]


class Ledger:
    def __init__(self, *, url: str, run: str) -> None:
        if not run or ":" in run:
            raise ValueError(f"run must be a non-empty name without ':', got {run!r}")
        self.url = url
        self.run = run
        self._redis: redis.Redis[bytes] = redis.Redis.from_url(url)
        self._apply = self._redis.register_script(_APPLY)

    def _key(self, suffix: str) -> str:
        return f"chaos:{self.run}:{suffix}"

    def apply(self, *, task_id: str, order: str, key: str, seq: int) -> bool:
        """Apply one order's effect once per task id; True if it was applied now."""
        keys = [self._key(s) for s in ("runs", "inbox", "applied", "last", "ooo", "effects")]
        return bool(self._apply(keys=keys, args=[task_id, order, key, seq]))

    def record_submits(self, orders: Iterable[str], answer: str) -> None:
        """Write the submitter's answer for ``orders``: ``sent`` before they are queued,
        then ``ok`` (acknowledged by flush) or ``fail`` (reported as not delivered)."""
        mapping = dict.fromkeys(orders, answer)
        if not mapping:
            return
        pipe = self._redis.pipeline()
        pipe.hset(self._key("submits"), mapping=mapping)  # type: ignore[arg-type]
        if answer == FAIL:
            pipe.sadd(self._key("failed"), *mapping)
        pipe.execute()

    def failed_submits(self) -> frozenset[str]:
        return frozenset(o.decode() for o in self._redis.smembers(self._key("failed")))

    def history(self) -> History:
        """The submit and effect histories, checked (see :mod:`.history`)."""
        submits = {
            k.decode(): v.decode() for k, v in self._redis.hgetall(self._key("submits")).items()
        }
        effects = []
        for raw in self._redis.lrange(self._key("effects"), 0, -1):
            order, key, seq = raw.decode().rsplit("|", 2)
            effects.append(Effect(order=order, key=key, seq=int(seq)))
        return check(submits, effects)

    def attempt(self, order: str) -> int:
        """Count an attempt of ``order`` (whatever its outcome); return the count so far."""
        return int(self._redis.hincrby(self._key("attempts"), order, 1))

    def applied_orders(self) -> frozenset[str]:
        """The orders whose effect happened: what the measurement loop samples twice a
        second, without the rest of :meth:`counts`."""
        return frozenset(o.decode() for o in self._redis.hkeys(self._key("applied")))

    def counts(self) -> LedgerCounts:
        applied = {k.decode(): int(v) for k, v in self._redis.hgetall(self._key("applied")).items()}
        runs = {k.decode(): int(v) for k, v in self._redis.hgetall(self._key("runs")).items()}
        return LedgerCounts(
            applied_orders=len(applied),
            duplicates=sum(v - 1 for v in applied.values() if v > 1),
            reruns=sum(v - 1 for v in runs.values() if v > 1),
            out_of_order=int(self._redis.scard(self._key("ooo"))),
            applied_ids=frozenset(applied),
        )

    def clear(self) -> None:
        self._redis.delete(*(self._key(s) for s in _SUFFIXES))

    def close(self) -> None:
        self._redis.close()
