"""Writing a dead letter so that it always fits, and knowing when it is on Kafka."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import DeliveryError
from ..kafka.delivery import Write, Writes
from ..protocol.deadletter import (
    DLQ_HEADER_PREFIX,
    HEADERS_DROPPED,
    KEY_DROPPED,
    VALUE_DROPPED,
    DeadLetter,
    dlq_headers,
)
from ..protocol.headers import Headers

__all__ = ["DeadLetterWriter", "fit"]

log = logging.getLogger("kafcel.deadletter")

_DROPPED = DLQ_HEADER_PREFIX + VALUE_DROPPED
_HEADERS_DROPPED = DLQ_HEADER_PREFIX + HEADERS_DROPPED
_KEY_DROPPED = DLQ_HEADER_PREFIX + KEY_DROPPED
# What is shed, in order: the value, then the record's own headers, then its key.
_FULL, _NO_VALUE, _NO_HEADERS, _NO_KEY = 0, 1, 2, 3
# librdkafka's own limit check counts the record's framing besides key, value and
# headers (varints, attributes, per-header lengths): keep this much room for it.
_FRAMING_BYTES = 512
_PER_HEADER_BYTES = 12
# librdkafka's message.max.bytes when the producer's configuration does not set it.
_PRODUCER_MAX_BYTES = 1_000_000


@dataclass(frozen=True)
class _Record:
    value: bytes | None
    key: bytes | None
    headers: Headers
    level: int


def _size(value: bytes | None, key: bytes | None, headers: Headers) -> int:
    total = len(value or b"") + len(key or b"") + _FRAMING_BYTES
    for name, raw in headers:
        total += len(name) + len(raw or b"") + _PER_HEADER_BYTES
    return total


def _at(
    letter: DeadLetter, value: bytes | None, key: bytes | None, original: Headers, level: int
) -> _Record:
    headers = dlq_headers(letter, original if level < _NO_HEADERS else None)
    if level >= _NO_VALUE:
        headers.append((_DROPPED, str(len(value or b"")).encode()))
    if level >= _NO_HEADERS:
        headers.append((_HEADERS_DROPPED, str(len(original)).encode()))
    if level >= _NO_KEY:
        headers.append((_KEY_DROPPED, str(len(key or b"")).encode()))
    return _Record(
        value=None if level >= _NO_VALUE else value,
        key=None if level >= _NO_KEY else key,
        headers=headers,
        level=level,
    )


def fit(
    letter: DeadLetter,
    *,
    value: bytes | None,
    key: bytes | None,
    headers: Headers,
    max_bytes: int,
    level: int = _FULL,
) -> tuple[bytes | None, bytes | None, Headers, int]:
    """The dead letter of a record, shed until it fits ``max_bytes``: first without the
    value (``kafcel.value_dropped_bytes`` says how big it was), then also without the
    record's own headers (``kafcel.headers_dropped`` counts them), then without its key
    (``kafcel.key_dropped_bytes``). ``level`` starts further down that list (a broker
    refused the record as too large). The ``kafcel.*`` headers are bounded
    (:class:`DeadLetter` caps its texts), so the last level always fits."""
    while True:
        record = _at(letter, value, key, headers, level)
        if level >= _NO_KEY or _size(record.value, record.key, record.headers) <= max_bytes:
            return record.value, record.key, record.headers, record.level
        level += 1


class DeadLetterWriter:
    """Writes dead letters to ``topic`` through ``writes``; ``on_written`` runs once Kafka
    has one. A letter refused as too large sheds one more part and goes again at once;
    one that fails otherwise is tried again while wanted (:class:`kafcel.kafka.delivery.Writes`).
    A worker, which must know before it acks its task, uses :meth:`write_and_wait`."""

    def __init__(self, *, writes: Writes, topic: str, config: dict[str, Any]) -> None:
        self._writes = writes
        self._topic = topic
        self._max_bytes = int(config.get("message.max.bytes", _PRODUCER_MAX_BYTES))

    def write(
        self,
        letter: DeadLetter,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        on_written: Callable[[], None],
        wanted: Callable[[], bool] = lambda: True,
        level: int = _FULL,
    ) -> None:
        """Queue the dead letter; ``on_written()`` runs in ``poll()`` once it is on Kafka."""
        fitted_value, fitted_key, fitted_headers, level = fit(
            letter, value=value, key=key, headers=headers, max_bytes=self._max_bytes, level=level
        )

        def shed() -> None:
            if level >= _NO_KEY:
                self._writes.later(write, "refused as too large even without value, headers, key")
                return
            self.write(
                letter,
                value=value,
                key=key,
                headers=headers,
                on_written=on_written,
                wanted=wanted,
                level=level + 1,
            )

        write = Write(
            topic=self._topic,
            value=fitted_value,
            key=fitted_key,
            headers=fitted_headers,
            written=on_written,
            too_large=shed,
            wanted=wanted,
        )
        self._writes.send(write)

    def write_and_wait(
        self,
        letter: DeadLetter,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        timeout_s: float,
    ) -> None:
        """Write and wait until Kafka has the dead letter; raise DeliveryError if it does
        not within ``timeout_s`` (a refusal as too large is shed further meanwhile)."""
        done: list[bool] = []
        self.write(
            letter,
            value=value,
            key=key,
            headers=headers,
            on_written=lambda: done.append(True),
            wanted=lambda: not done and time.monotonic() < deadline,
        )
        deadline = time.monotonic() + timeout_s
        self._writes.producer.flush(timeout_s)
        if not done:
            self._writes.prune()
            raise DeliveryError(
                f"dead letter for {self._topic} not delivered within {timeout_s:g}s"
            )
