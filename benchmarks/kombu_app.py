"""The Celery app of the kombu-kafka rows: Celery's own Kafka transport as broker.

The same configuration as the chaos suite's baseline (``confluentkafka://``, its
polling interval lowered so the transport is not asleep between tasks).
"""

from __future__ import annotations

from kafcel.chaos.kombu_app import app

from .tasks import register

register(app)
