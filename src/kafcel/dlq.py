"""Dead-letter records: the original bytes plus headers that say what went wrong and where.

Both the bridge (records that cannot become tasks) and the workers (tasks that failed for
good) write here, so one topic holds everything that needs a human or a replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "DLQ_HEADER_PREFIX",
    "MAX_TEXT_CHARS",
    "DeadLetter",
    "clip",
    "dlq_headers",
    "parse_dlq_headers",
]

DLQ_HEADER_PREFIX = "kafcel."

KafkaHeaders = Sequence[tuple[str, bytes | str | None]]

# A header text is cut past this many characters (a 5 MB exception message must not make
# its dead letter larger than Kafka takes); the traceback keeps its end, the rest their start.
MAX_TEXT_CHARS = 8192


def clip(text: str, *, keep_end: bool = False, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    cut = f" [... {len(text) - limit} characters cut]"
    return text[-limit:] + cut if keep_end else text[:limit] + cut


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
            "error.class": clip(self.error_class, limit=256),
            "error.message": clip(self.error_message),
            "origin.topic": self.origin_topic,
            "origin.partition": self.origin_partition,
            "origin.offset": self.origin_offset,
            "stage": self.stage,
            "task": self.task,
            "task_id": self.task_id,
            "attempts": self.attempts,
            "replays": self.replays,
            "error.field": None if self.field is None else clip(self.field, limit=256),
            "traceback": None if self.traceback is None else clip(self.traceback, keep_end=True),
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
