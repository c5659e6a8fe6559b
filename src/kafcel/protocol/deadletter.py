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
    "HEADERS_DROPPED",
    "KEY_DROPPED",
    "KNOWN_FIELDS",
    "LETTER_FIELDS",
    "MAX_TEXT_CHARS",
    "VALUE_DROPPED",
    "DeadLetter",
    "clip",
    "dlq_headers",
    "parse_dlq_headers",
]

DLQ_HEADER_PREFIX = "kafcel."

KafkaHeaders = Sequence[tuple[str, bytes | str | None]]

# The kafcel.* headers a dead letter may carry, without the prefix: what it says of the
# failure (DeadLetter.headers), and what the writer shed to make it fit.
LETTER_FIELDS = (
    "error.class",
    "error.message",
    "origin.topic",
    "origin.partition",
    "origin.offset",
    "stage",
    "task",
    "task_id",
    "attempts",
    "replays",
    "error.field",
    "traceback",
    "failed_at",
)
VALUE_DROPPED, HEADERS_DROPPED, KEY_DROPPED = (
    "value_dropped_bytes",
    "headers_dropped",
    "key_dropped_bytes",
)
KNOWN_FIELDS = frozenset({*LETTER_FIELDS, VALUE_DROPPED, HEADERS_DROPPED, KEY_DROPPED})

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
        values: dict[str, object] = dict(
            zip(
                LETTER_FIELDS,
                (
                    clip(self.error_class, limit=256),
                    clip(self.error_message),
                    self.origin_topic,
                    self.origin_partition,
                    self.origin_offset,
                    self.stage,
                    self.task,
                    self.task_id,
                    self.attempts,
                    self.replays,
                    None if self.field is None else clip(self.field, limit=256),
                    None if self.traceback is None else clip(self.traceback, keep_end=True),
                    self.failed_at or datetime.now(UTC).isoformat(),
                ),
                strict=True,
            )
        )
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
