"""The Celery app the chaos suite's workers run for the kafcel rows.

Broker, result backend and once-guard are the suite's own Redis (``KAFCEL_REDIS_URL``),
the one the scenarios flush and restart; the ledger is another Redis that no fault
touches. Configuration is read when Celery first needs it, never at import time.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

from ..celery import install
from ..settings import Settings
from .tasks import apply_effect, count_attempt, kill_self

__all__ = ["QUEUE", "app"]

QUEUE = "kafcel-chaos"


class _LazyConfig:
    @property
    def broker_url(self) -> str:
        return Settings.from_env().redis_url

    @property
    def result_backend(self) -> str:
        return Settings.from_env().redis_url

    @property
    def task_default_queue(self) -> str:
        return os.environ.get("KAFCEL_CHAOS_QUEUE", QUEUE)

    result_expires = 3600
    broker_connection_retry_on_startup = True
    worker_hijack_root_logger = False
    # Reconnect quickly when the chaos suite restarts Redis under the worker.
    broker_connection_max_retries = None


app = Celery("kafcel_chaos")
app.config_from_object(_LazyConfig())
install(app)


@app.task(bind=True, name="chaos.apply")  # type: ignore[untyped-decorator]
def apply(self: Task, run: str, order: str, key: str, seq: int, work_ms: float = 0.0) -> str:
    return apply_effect(
        task_id=str(self.request.id), run=run, order=order, key=key, seq=seq, work_ms=work_ms
    )


@app.task(bind=True, name="chaos.always_fail", max_retries=2)  # type: ignore[untyped-decorator]
def always_fail(self: Task, run: str, order: str) -> Any:
    count_attempt(run, order)
    raise self.retry(exc=RuntimeError(f"order {order} always fails"), countdown=0.5)


@app.task(name="chaos.self_kill")  # type: ignore[untyped-decorator]
def self_kill(run: str, order: str) -> None:
    kill_self(run, order)
