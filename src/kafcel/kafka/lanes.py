"""The lanes a bridge or a consuming worker reads: ``topics`` resolved against Kafka.

A pattern is matched against the cluster's topic list here, by kafcel, not by
librdkafka's regex subscription: a pattern such as ``^celery-tasks\\..*`` would match
each lane's own ``.results``, ``.dlq`` and ``.scheduled`` topics too, and those must
never be read as task topics (``Settings.lane_topics`` leaves them out).
"""

from __future__ import annotations

from ..settings import Settings
from .admin import topic_names

__all__ = ["lanes_of"]


def lanes_of(settings: Settings) -> list[Settings]:
    """Each lane's settings (``settings`` alone when it names no ``topics``)."""
    if not settings.topics:
        return [settings]
    patterns = any(spec.pattern is not None for spec in settings.lane_specs())
    existing = (
        topic_names(settings.bootstrap_servers, extra=settings.librdkafka()) if patterns else ()
    )
    weights = settings.lane_topics(existing)
    return [settings.lane(topic, weights=weights) for topic in weights]
