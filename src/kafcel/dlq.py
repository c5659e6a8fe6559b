"""Dead-letter records: the original bytes plus headers that say what went wrong and where.

Both the bridge (records that cannot become tasks) and the workers (tasks that failed for
good) write here, so one topic holds everything that needs a human or a replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["DLQ_HEADER_PREFIX", "DeadLetter", "dlq_headers", "parse_dlq_headers"]

DLQ_HEADER_PREFIX = "kafcel."

KafkaHeaders = Sequence[tuple[str, bytes | str | None]]


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """Why and where a record failed; becomes the ``kafcel.*`` headers of the DLQ record."""

    error_class: str
    error_message: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    stage: str  # "bridge" (never reached Celery) or "worker" (failed after retries)
    task: str | None = None
    task_id: str | None = None
    attempts: int = 0
    replays: int = 0  # times this record had been replayed when it failed (again)
    field: str | None = None
    traceback: str | None = None
    failed_at: str = ""

    def headers(self) -> list[tuple[str, str | bytes | None]]:
        values: dict[str, object] = {
            "error.class": self.error_class,
            "error.message": self.error_message,
            "origin.topic": self.origin_topic,
            "origin.partition": self.origin_partition,
            "origin.offset": self.origin_offset,
            "stage": self.stage,
            "task": self.task,
            "task_id": self.task_id,
            "attempts": self.attempts,
            "replays": self.replays,
            "error.field": self.field,
            "traceback": self.traceback,
            "failed_at": self.failed_at or datetime.now(UTC).isoformat(),
        }
        return [
            (DLQ_HEADER_PREFIX + name, str(value).encode())
            for name, value in values.items()
            if value is not None
        ]


def dlq_headers(
    letter: DeadLetter, original: KafkaHeaders | None
) -> list[tuple[str, str | bytes | None]]:
    """The original record's headers (kept for replay) followed by the ``kafcel.*`` ones."""
    kept: list[tuple[str, str | bytes | None]] = []
    for name, value in original or ():
        if name.startswith(DLQ_HEADER_PREFIX):
            # A replayed record that fails again gets fresh diagnostics, not two sets.
            continue
        if value is None:
            kept.append((name, b""))
        else:
            kept.append((name, value.encode() if isinstance(value, str) else bytes(value)))
    return kept + letter.headers()


def parse_dlq_headers(headers: KafkaHeaders | None) -> dict[str, str]:
    """The ``kafcel.*`` headers of a DLQ record, without the prefix."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        if name.startswith(DLQ_HEADER_PREFIX) and value is not None:
            raw = value.encode() if isinstance(value, str) else value
            out[name[len(DLQ_HEADER_PREFIX) :]] = raw.decode("utf-8", "replace")
    return out
