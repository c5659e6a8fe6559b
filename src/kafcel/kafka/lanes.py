"""The lanes a bridge or a consuming worker reads: ``topics`` resolved against Kafka.

A pattern is matched against the cluster's topic list here, by kafcel, not by
librdkafka's regex subscription: a pattern such as ``^celery-tasks\\..*`` would match
each lane's own ``.results``, ``.dlq`` and ``.scheduled`` topics too, and those must
never be read as task topics (``Settings.lane_topics`` leaves them out).
"""

from __future__ import annotations

from ..settings import Settings
from .admin import topic_names

__all__ = ["dlq_topics", "lanes_of"]


def lanes_of(settings: Settings) -> list[Settings]:
    """Each lane's settings (``settings`` alone when it names no ``topics``)."""
    if not settings.topics:
        return [settings]
    existing = (
        topic_names(settings.bootstrap_servers, extra=settings.librdkafka())
        if settings.has_lane_patterns()
        else ()
    )
    weights = settings.lane_topics(existing)
    return [settings.lane(topic, weights=weights) for topic in weights]


def dlq_topics(lanes: list[Settings]) -> list[str]:
    """The distinct DLQ topics of ``lanes`` (each lane's own, or the one they share), in
    lane order."""
    return list(dict.fromkeys(lane.dlq_topic for lane in lanes))
