"""The Celery app of the lanes row: the bench's app, its workers reading their queues in
the order ``-Q`` names them.

kombu's Redis transport takes a worker's queues round robin by default: a worker on
``-Q urgent,bulk`` would take from the bulk queue's backlog as often as from the urgent
one. ``queue_order_strategy: priority`` makes each BRPOP name the queues in ``-Q``'s
order, so Redis hands over an urgent task whenever there is one (kombu.transport.redis;
kombu.utils.scheduling.priority_cycle).
"""

from __future__ import annotations

from kafcel.celery import app_from_env

from .tasks import register

app = app_from_env("kafcel_bench", queue_env="KAFCEL_BENCH_QUEUE", default_queue="kafcel-bench")
# Kept with the app's other settings until its configuration is first read: nothing here
# reads the environment at import.
app.conf.broker_transport_options = {"queue_order_strategy": "priority"}
register(app)
