"""The Celery app the chaos suite's workers run for the kafcel rows.

Broker, result backend and once-guard are the suite's own Redis (``KAFCEL_REDIS_URL``),
the one the scenarios flush and restart; the ledger is another Redis that no fault
touches. Configuration is read when Celery first needs it, never at import time.
"""

from __future__ import annotations

import os

from celery import Celery

from ..celery import install
from ..settings import Settings
from .tasks import register

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
register(app)
