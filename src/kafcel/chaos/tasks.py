"""Task bodies shared by the chaos suite's Celery apps (kafcel's and kombu-kafka's).

Each body reports to the :class:`~kafcel.chaos.ledger.Ledger` named by its ``run``; the
ledger's Redis URL comes from ``KAFCEL_CHAOS_LEDGER_URL``, read when a task first runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task

from .ledger import Ledger

__all__ = ["LEDGER_ENV", "apply_effect", "count_attempt", "kill_self", "register"]

LEDGER_ENV = "KAFCEL_CHAOS_LEDGER_URL"

_ledgers: dict[tuple[int, str], Ledger] = {}


def _ledger(run: str) -> Ledger:
    # One client per process and run: prefork children must not share a parent's socket.
    key = (os.getpid(), run)
    ledger = _ledgers.get(key)
    if ledger is None:
        url = os.environ.get(LEDGER_ENV)
        if not url:
            raise RuntimeError(f"{LEDGER_ENV} is not set in the worker's environment")
        ledger = _ledgers[key] = Ledger(url=url, run=run)
    return ledger


def apply_effect(*, task_id: str, run: str, order: str, key: str, seq: int, work_ms: float) -> str:
    """The order's work (``work_ms`` of it), then its effect in the ledger."""
    if work_ms > 0:
        time.sleep(work_ms / 1000)
    _ledger(run).apply(task_id=task_id, order=order, key=key, seq=seq)
    return order


def count_attempt(run: str, order: str) -> int:
    return _ledger(run).attempt(order)


def kill_self(run: str, order: str) -> None:
    """Record the attempt, then end this process the hard way (no cleanup, no result)."""
    count_attempt(run, order)
    os._exit(17)


def register(app: Celery) -> None:
    """Define the suite's tasks on ``app`` alone (not shared: two apps, one process)."""

    @app.task(bind=True, name="chaos.apply", shared=False)  # type: ignore[untyped-decorator]
    def apply(self: Task, run: str, order: str, key: str, seq: int, work_ms: float = 0.0) -> str:
        return apply_effect(
            task_id=str(self.request.id), run=run, order=order, key=key, seq=seq, work_ms=work_ms
        )

    @app.task(bind=True, name="chaos.always_fail", max_retries=2, shared=False)  # type: ignore[untyped-decorator]
    def always_fail(self: Task, run: str, order: str) -> Any:
        count_attempt(run, order)
        raise self.retry(exc=RuntimeError(f"order {order} always fails"), countdown=0.5)

    @app.task(name="chaos.self_kill", shared=False)  # type: ignore[untyped-decorator]
    def self_kill(run: str, order: str) -> None:
        kill_self(run, order)
