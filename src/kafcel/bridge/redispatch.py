"""Redispatch: send a task again when its Celery message was lost.

A dispatched task whose outcome has not arrived ``after_s`` after it was due to start is
looked up in the once-guard. A live key (queued by the bridge, running under a renewed
lease, or waiting for a Celery retry) means the message exists: look again later. No key
means no one holds it: the queued mark went with a FLUSHALL or a Redis restart, or the
lease of a worker killed with the message unacked ran out. Unless the result backend knows
the task finished, it is sent again with the same id. The once-guard makes a needless copy
harmless (it re-announces or backs off), and each further redispatch of one id waits twice
as long.

A task the result backend holds as finished while no outcome was announced (its process
was killed by a hard time limit or ``revoke(terminate=True)``: Celery wrote the state from
the main process) is reported as an orphan after two sweeps, for the bridge to settle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from celery import Celery

from ..errors import BrokerError
from ..guard.once import OnceGuard
from ..protocol.outcome import REVOKED, SUCCESS, Outcome

__all__ = ["BackendState", "Redispatcher", "backend_state"]

log = logging.getLogger("kafcel.bridge")

_READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
_MAX_BACKOFF = 8


@dataclass(frozen=True)
class BackendState:
    task_id: str
    state: str
    error_class: str | None = None

    def outcome(self, task: str) -> Outcome:
        """The outcome of an orphan: Celery finished it but no worker announced it (a hard
        time limit or ``revoke(terminate=True)`` killed its process)."""
        return Outcome(
            task_id=self.task_id,
            task=task,
            status=SUCCESS if self.state == SUCCESS else REVOKED,
            error_class=self.error_class,
            error_message=(
                f"Celery's result backend holds {self.state} for this task, but no worker "
                "published its outcome (process killed: hard time limit or revoke with "
                "terminate)"
            ),
        )


@dataclass
class _Watch:
    due: float
    sent: int = 0  # redispatches so far
    ready_seen: int = 0  # sweeps that found it finished in the backend, unannounced
    force: bool = False  # Redis lost its data: a queued mark no longer vouches for it


class Redispatcher:
    def __init__(
        self,
        *,
        after_s: float,
        guard: OnceGuard,
        backend_state: Callable[[str], BackendState],
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

    def dispatched(self, task_id: str, *, not_before_s: float = 0.0) -> None:
        """Watch ``task_id``; it may not start before ``not_before_s`` (eta, countdown)."""
        if task_id not in self._watch:
            self._watch[task_id] = _Watch(due=self._clock() + not_before_s + self._after_s)

    def recheck_all(self, *, after_s: float) -> None:
        """Redis lost its data: look at every watched task again in ``after_s``.

        Messages published between the loss and its discovery were dropped by kombu (the
        queue bindings went too) although their queued marks were written, so this once a
        queued mark does not count as live. ``after_s`` gives running tasks' lease keepers
        time to re-create their leases first.
        """
        due = self._clock() + after_s
        for watch in self._watch.values():
            watch.due = min(watch.due, due)
            watch.force = True
        self._next_sweep = min(self._next_sweep, due)

    def not_sent(self, task_id: str) -> None:
        """A copy :meth:`due` asked for could not be sent because Celery's broker is down:
        try again in ``after_s``, with no added backoff. Still forced: a queued mark may
        yet speak for a message the broker lost."""
        watch = self._watch.get(task_id)
        if watch is None:
            return
        watch.sent = max(0, watch.sent - 1)
        watch.force = True
        watch.due = self._clock() + self._after_s

    def settled(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._watch.pop(task_id, None)

    def due(self) -> tuple[list[str], list[BackendState]]:
        """Ids to send again now, and orphans to settle (one sweep per ``sweep_every_s``)."""
        now = self._clock()
        if now < self._next_sweep:
            return [], []
        self._next_sweep = now + self._sweep_every_s
        overdue = [t for t, w in self._watch.items() if w.due <= now][: self._max_per_sweep]
        if not overdue:
            return [], []
        try:
            states = self._guard.peek(overdue)
        except BrokerError as exc:
            log.warning("redispatch check skipped: %s", exc)
            return [], []
        resend: list[str] = []
        orphans: list[BackendState] = []
        for task_id in overdue:
            watch = self._watch[task_id]
            state = states[task_id]
            forced, watch.force = watch.force, False
            if state.live and not (forced and state.queued):
                watch.due = now + self._after_s
                continue
            if not state.done:
                backend = self._safe_backend_state(task_id)
                if backend.state in _READY:
                    # Normally its outcome is on its way; twice in a row, it never will be.
                    watch.ready_seen += 1
                    watch.due = now + self._after_s
                    if watch.ready_seen >= 2:
                        orphans.append(backend)
                        del self._watch[task_id]
                    continue
            # A done marker with no outcome seen means the announcement went astray; a
            # copy re-announces it without running the task again.
            watch.sent += 1
            watch.due = now + self._after_s * min(2**watch.sent, _MAX_BACKOFF)
            resend.append(task_id)
        return resend, orphans

    def _safe_backend_state(self, task_id: str) -> BackendState:
        try:
            return self._backend_state(task_id)
        except Exception as exc:  # the backend is down: it cannot vouch for the task
            log.warning("result backend unavailable for %s: %s", task_id, exc)
            return BackendState(task_id=task_id, state="UNKNOWN")


def backend_state(app: Celery, task_id: str) -> BackendState:
    """What Celery's result backend holds for ``task_id``."""
    result = app.AsyncResult(task_id)
    state = str(result.state)
    error = result.result if state != SUCCESS else None
    return BackendState(
        task_id=task_id,
        state=state,
        error_class=type(error).__name__ if isinstance(error, BaseException) else None,
    )
