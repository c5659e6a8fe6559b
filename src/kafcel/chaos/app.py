"""The Celery app the chaos suite's workers run for the kafcel rows.

Broker, result backend and once-guard are the suite's own Redis (``KAFCEL_REDIS_URL``),
the one the scenarios flush and restart; the ledger is another Redis that no fault
touches. Configuration is read when Celery first needs it, never at import time.
"""

from __future__ import annotations

from ..worker import app_from_env
from .tasks import register

__all__ = ["QUEUE", "app"]

QUEUE = "kafcel-chaos"


app = app_from_env("kafcel_chaos", queue_env="KAFCEL_CHAOS_QUEUE", default_queue=QUEUE)
register(app)
