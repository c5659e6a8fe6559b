"""Log set-up for kafcel processes: human text, or one JSON object per line for ELK/Loki.

Per-record events (consumed, dispatched, settled, dead-lettered, redispatched) go to the
``kafcel.events`` logger with their fields in ``extra={"kafcel": {...}}``. In JSON those
fields become top-level keys (task_id, key, topic, partition, offset, trace_id...); in
text they are appended as ``key=value``. Text logs show only the events worth a human's
attention unless the level is DEBUG; JSON logs carry every event, one line each.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..protocol.outcome import Origin

__all__ = [
    "EVENTS_LOGGER",
    "JsonFormatter",
    "TextFormatter",
    "setup_logging",
    "task_fields",
    "worker_logs",
]

EVENTS_LOGGER = "kafcel.events"

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "kafcel", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual text line, with an event's fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "kafcel", None)
        if isinstance(fields, dict):
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
            if extra:
                text = f"{text} [{extra}]"
        return text


def setup_logging(level: str, log_format: str = "text") -> None:
    """Configure the root logger once for a kafcel process (bridge, dashboard)."""
    numeric = getattr(logging, level.upper(), None)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    _set_events_level(numeric, log_format)


def _set_events_level(level: int, log_format: str) -> None:
    # Text logs are for people: per-record events only at DEBUG (warnings always show).
    text_only = log_format != "json" and level > logging.DEBUG
    logging.getLogger(EVENTS_LOGGER).setLevel(max(level, logging.WARNING) if text_only else level)


def task_fields(event: str, task: str, task_id: str, origin: Origin, **more: Any) -> dict[str, Any]:
    """``extra=`` of a worker-side event line: the same fields as the bridge's."""
    fields: dict[str, Any] = {
        "event": event,
        "task_id": task_id,
        "task": task,
        "key": origin.key,
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "trace_id": origin.trace_id,
    }
    fields.update(more)
    return {"kafcel": fields}


def worker_logs(log_format: Callable[[], str]) -> None:
    """Apply ``log_format`` to a Celery worker's logs: JSON lines with every task event,
    or Celery's text with the per-task events only at DEBUG (as for the bridge).

    Connected to Celery's logger set-up signals, which run in the worker at start, after
    Celery has built its handlers: only their formatters change.
    """
    from celery.signals import after_setup_logger, after_setup_task_logger

    def swap(logger: logging.Logger | None = None, **_: Any) -> None:
        chosen = log_format()
        _set_events_level(logging.getLogger().getEffectiveLevel(), chosen)
        if chosen == "json":
            for handler in (logger or logging.getLogger()).handlers:
                handler.setFormatter(JsonFormatter())

    after_setup_logger.connect(swap, weak=False)
    after_setup_task_logger.connect(swap, weak=False)
