"""Which Kafka record a Celery task request came from: the ``kafcel`` message header.

The bridge puts the record's :class:`~kafcel.protocol.outcome.Origin` in that header of
every message it sends; a request without it was not dispatched by kafcel.
"""

from __future__ import annotations

from typing import Any

from ..protocol.headers import CELERY_HEADER
from ..protocol.outcome import Origin

__all__ = ["HEADER", "origin_of"]

HEADER = CELERY_HEADER


def origin_of(request: Any) -> Origin | None:
    """The kafcel origin of a task request, or ``None`` if kafcel did not dispatch it."""
    raw = getattr(request, HEADER, None)
    if raw is None:
        raw = (getattr(request, "headers", None) or {}).get(HEADER)
    return Origin.from_header(raw)
