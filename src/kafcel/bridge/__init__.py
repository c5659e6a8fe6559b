"""The kafcel bridge: Kafka task topic in, Celery tasks out, offsets committed when settled."""

from .filter import TaskFilter
from .lanes import Lanes, loop_for
from .presence import BridgeStats
from .runner import Bridge
from .tracker import OffsetTracker

__all__ = ["Bridge", "BridgeStats", "Lanes", "OffsetTracker", "TaskFilter", "loop_for"]
