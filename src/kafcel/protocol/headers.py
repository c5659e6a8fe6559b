"""Record headers as kafcel reads and writes them: the header list of a Kafka record, and
the ``kafcel-replay-*`` headers a replayed record carries.

A replay is a new record on the task topic. Its headers say where it came from
(``kafcel-replay-of``), when (``kafcel-replay-at``), under which id it ran before
(``kafcel-replay-original-id``) and how often it has been replayed
(``kafcel-replay-count``); the bridge reads that count on every record, and a dead letter
of a replayed record carries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from confluent_kafka import Message

__all__ = [
    "CELERY_HEADER",
    "REPLAY_AT",
    "REPLAY_COUNT",
    "REPLAY_OF",
    "REPLAY_ORIGINAL_ID",
    "Headers",
    "header_list",
    "replay_count",
    "replay_headers",
]

# The Celery message header carrying a task's Origin: a request without it was not
# dispatched by kafcel.
CELERY_HEADER = "kafcel"
REPLAY_COUNT = "kafcel-replay-count"
REPLAY_OF = "kafcel-replay-of"
REPLAY_AT = "kafcel-replay-at"
REPLAY_ORIGINAL_ID = "kafcel-replay-original-id"
_REPLAY_HEADERS = (REPLAY_COUNT, REPLAY_OF, REPLAY_AT, REPLAY_ORIGINAL_ID)

Headers = list[tuple[str, str | bytes | None]]


def header_list(msg: Message) -> Headers:
    """The record's headers as (name, bytes) pairs."""
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    out: Headers = []
    for name, value in pairs:
        if value is None:
            out.append((name, b""))
        else:
            out.append((name, value.encode() if isinstance(value, str) else bytes(value)))
    return out


def replay_count(
    headers: Mapping[str, bytes | str | None] | Sequence[tuple[str, bytes | str | None]] | None,
) -> int:
    """How often the record was replayed before (its ``kafcel-replay-count`` header)."""
    if not headers:
        return 0  # the common case, on the bridge's path for every record
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == REPLAY_COUNT and value is not None:
            text = value.decode() if isinstance(value, bytes) else value
            try:
                return max(int(text), 0)
            except ValueError:
                return 0
    return 0


def replay_headers(
    original: Headers,
    *,
    source: str,
    original_id: str | None,
    drop_prefix: str = "",
    replays: int = 0,
) -> Headers:
    """The record's own headers without earlier replay (and ``drop_prefix``) ones, plus
    this replay's; ``replays`` is the count when the headers no longer carry it."""
    count = max(replay_count(original), replays) + 1
    kept = [
        (name, value)
        for name, value in original
        if name not in _REPLAY_HEADERS and not (drop_prefix and name.startswith(drop_prefix))
    ]
    kept += [
        (REPLAY_COUNT, str(count).encode()),
        (REPLAY_OF, source.encode()),
        (REPLAY_AT, datetime.now(UTC).isoformat().encode()),
    ]
    if original_id:
        kept.append((REPLAY_ORIGINAL_ID, original_id.encode()))
    return kept
