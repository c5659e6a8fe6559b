"""The kafcel bridge: Kafka task topic in, Celery tasks out, offsets committed when settled."""

from .filter import TaskFilter
from .runner import Bridge, BridgeStats, load_app
from .tracker import OffsetTracker

__all__ = ["Bridge", "BridgeStats", "OffsetTracker", "TaskFilter", "load_app"]
