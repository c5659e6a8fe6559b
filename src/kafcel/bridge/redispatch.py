"""Redispatch: send a task again when its Celery message was lost.

A dispatched task whose outcome has not arrived after ``after_s`` is looked up in the
once-guard. A live lease (running, or waiting for a Celery retry) means a worker has it:
look again later. No lease and no done marker means no worker holds it, so unless the
result backend knows it finished, the message is presumed lost (a FLUSHALL, a Redis
restart, a worker killed with the message unacked) and the task is sent again with the
same id. The once-guard makes a needless copy harmless (it re-announces or backs off), and
each further redispatch of one id waits twice as long, so a long Celery queue is not
flooded with copies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import BrokerError
from ..once import OnceGuard

__all__ = ["Redispatcher"]

log = logging.getLogger("kafcel.bridge")

_READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
_MAX_BACKOFF = 8


@dataclass
class _Watch:
    due: float
    sent: int  # redispatches so far


class Redispatcher:
    def __init__(
        self,
        *,
        after_s: float,
        guard: OnceGuard,
        backend_state: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
        sweep_every_s: float = 1.0,
        max_per_sweep: int = 1000,
    ) -> None:
        if after_s <= 0:
            raise ValueError(f"after_s must be positive, got {after_s}")
        self._after_s = after_s
        self._guard = guard
        self._backend_state = backend_state
        self._clock = clock
        self._sweep_every_s = sweep_every_s
        self._max_per_sweep = max_per_sweep
        self._watch: dict[str, _Watch] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._watch)

    def dispatched(self, task_id: str) -> None:
        if task_id not in self._watch:
            self._watch[task_id] = _Watch(due=self._clock() + self._after_s, sent=0)

    def settled(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._watch.pop(task_id, None)

    def due(self) -> list[str]:
        """Ids to send again now (at most one sweep per ``sweep_every_s``)."""
        now = self._clock()
        if now < self._next_sweep:
            return []
        self._next_sweep = now + self._sweep_every_s
        overdue = [t for t, w in self._watch.items() if w.due <= now][: self._max_per_sweep]
        if not overdue:
            return []
        try:
            states = self._guard.peek(overdue)
        except BrokerError as exc:
            log.warning("redispatch check skipped: %s", exc)
            return []
        resend: list[str] = []
        for task_id in overdue:
            watch = self._watch[task_id]
            state = states[task_id]
            if state.live:
                watch.due = now + self._after_s
                continue
            if not state.done:
                backend = self._safe_backend_state(task_id)
                if backend in _READY:
                    # Celery finished it, so its outcome is on the results topic already.
                    log.warning("%s is %s in the result backend but unsettled", task_id, backend)
                    watch.due = now + self._after_s
                    continue
            # A done marker with no outcome seen means the announcement went astray; a
            # copy re-announces it without running the task again.
            watch.sent += 1
            watch.due = now + self._after_s * min(2**watch.sent, _MAX_BACKOFF)
            resend.append(task_id)
        return resend

    def _safe_backend_state(self, task_id: str) -> str:
        try:
            return self._backend_state(task_id)
        except Exception as exc:  # the backend is down: it cannot vouch for the task
            log.warning("result backend unavailable for %s: %s", task_id, exc)
            return "UNKNOWN"
