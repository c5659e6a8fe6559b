"""Writing a dead letter so that it always fits, and knowing when it is on Kafka."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Producer

from ..dlq import (
    DLQ_HEADER_PREFIX,
    HEADERS_DROPPED,
    KEY_DROPPED,
    VALUE_DROPPED,
    DeadLetter,
    dlq_headers,
)
from ..errors import DeliveryError

__all__ = ["DeadLetterWriter", "fit"]

log = logging.getLogger("kafcel.deadletter")

Headers = list[tuple[str, str | bytes | None]]
OutHeaders = list[tuple[str, str | bytes | None]]

_RETRY_AFTER_S = 1.0
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
    headers: OutHeaders
    level: int


def _size(value: bytes | None, key: bytes | None, headers: OutHeaders) -> int:
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
) -> tuple[bytes | None, bytes | None, OutHeaders, int]:
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


Written = Callable[[], None]


@dataclass
class _Pending:
    letter: DeadLetter
    value: bytes | None
    key: bytes | None
    headers: Headers
    on_written: Written
    wanted: Callable[[], bool] | None = None
    level: int = _FULL
    too_large: bool = False  # the last refusal was for size: shed one level further


class DeadLetterWriter:
    """Writes dead letters through ``producer``; ``on_written`` runs once Kafka has one.

    A write that fails is kept and tried again by :meth:`retry_due` (a record refused as
    too large, one level of shedding further), never raised: the bridge must not
    crash-loop on one record. A worker, which must know before it acks its task, uses
    :meth:`write_and_wait`.
    """

    def __init__(self, *, producer: Producer, topic: str, config: dict[str, Any]) -> None:
        self._producer = producer
        self._topic = topic
        self._max_bytes = int(config.get("message.max.bytes", _PRODUCER_MAX_BYTES))
        self._retry: list[_Pending] = []
        self._retry_at = 0.0

    def write(
        self,
        letter: DeadLetter,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        on_written: Written,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        """Queue the dead letter; ``on_written()`` runs in ``poll()`` once it is on Kafka.
        A failed write is tried again while ``wanted()`` (a record whose partition moved
        to another bridge is that bridge's to dead-letter)."""
        self._send(_Pending(letter, value, key, headers, on_written, wanted))

    def _send(self, job: _Pending) -> None:
        value, key, headers, level = fit(
            job.letter,
            value=job.value,
            key=job.key,
            headers=job.headers,
            max_bytes=self._max_bytes,
            level=job.level,
        )
        job.level = level

        def delivered(err: Any, _: Any) -> None:
            if err is None:
                job.on_written()
                return
            log.warning("DLQ write failed (%s); retrying", err)
            if err.code() == RdKafkaError.MSG_SIZE_TOO_LARGE:
                job.level = min(job.level + 1, _NO_KEY)
                job.too_large = True
            self._later(job)

        while True:
            try:
                self._producer.produce(
                    self._topic, value=value, key=key, headers=headers, on_delivery=delivered
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                if "MSG_SIZE_TOO_LARGE" in str(exc) and job.level < _NO_KEY:
                    job.level += 1
                    self._send(job)
                    return
                log.error("cannot write to the DLQ topic: %s; retrying", exc)
                self._later(job)
                return

    def _later(self, job: _Pending) -> None:
        self._retry.append(job)
        self._retry_at = time.monotonic() + _RETRY_AFTER_S

    def retry_due(self, *, now: bool = False) -> None:
        """Send again the writes that failed, at most once a second unless ``now``."""
        if self._retry and (now or time.monotonic() >= self._retry_at):
            retry, self._retry = self._retry, []
            for job in retry:
                if job.wanted is None or job.wanted():
                    self._send(job)

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
        not within ``timeout_s``. A refusal as too large is shed further at once."""
        done: list[bool] = []
        job = _Pending(letter, value, key, headers, lambda: done.append(True))
        deadline = time.monotonic() + timeout_s
        self._send(job)
        while True:
            left = deadline - time.monotonic()
            self._producer.flush(max(left, 0))
            if done:
                return
            if job not in self._retry or not job.too_large or left <= 0:
                break
            self._retry.remove(job)
            job.too_large = False
            self._send(job)
        if job in self._retry:
            self._retry.remove(job)
        raise DeliveryError(f"dead letter for {self._topic} not delivered within {timeout_s:g}s")
