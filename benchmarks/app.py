"""The Celery app of the kafcel and plain-Celery rows: kafcel installed, Redis broker.

Tasks sent by ``send_task`` carry no kafcel header, so the same workers run them as
plain Celery tasks; that is the baseline the bench compares with.
"""

from __future__ import annotations

from kafcel.celery import app_from_env

from .tasks import register

app = app_from_env("kafcel_bench", queue_env="KAFCEL_BENCH_QUEUE", default_queue="kafcel-bench")
register(app)
