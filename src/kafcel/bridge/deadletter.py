"""Writes the bridge's dead letters and reports each one once Kafka has acknowledged it.

A record counts as settled only when its DLQ copy is on Kafka, so a crash between the
decision and the write re-reads the record instead of losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Message, Producer

from ..dlq import DeadLetter, dlq_headers
from ..errors import KafkaError, RecordRejected
from ..replay import header_list, replay_count
from .sequence import position

__all__ = ["DeadLetterWriter", "bridge_letter"]

log = logging.getLogger("kafcel.bridge")

_RETRY_AFTER_S = 1.0
_DROPPED = "kafcel.value_dropped_bytes"
_HEADERS_DROPPED = "kafcel.headers_dropped"
_KEY_DROPPED = "kafcel.key_dropped_bytes"
_NO_VALUE, _NO_HEADERS, _NO_KEY = 1, 2, 3

# Called with the record and the caller's token once its DLQ copy is on Kafka.
Written = Callable[[Message, Hashable], None]


def bridge_letter(
    msg: Message,
    exc: RecordRejected,
    *,
    error_class: str | None = None,
    task: str | None = None,
    task_id: str | None = None,
) -> DeadLetter:
    """Why the bridge dead-letters ``msg``, and where it came from."""
    (topic, partition), offset = position(msg)
    return DeadLetter(
        error_class=error_class or type(exc).__name__,
        error_message=exc.reason,
        field=exc.field,
        origin_topic=topic,
        origin_partition=partition,
        origin_offset=offset,
        stage="bridge",
        task=task,
        task_id=task_id,
        replays=replay_count(msg.headers()),
    )


class DeadLetterWriter:
    def __init__(self, *, producer: Producer, topic: str, on_written: Written) -> None:
        self._producer = producer
        self._topic = topic
        self._on_written = on_written
        self._retry: list[tuple[Message, DeadLetter, int, Hashable]] = []
        self._retry_at = 0.0

    def write(self, msg: Message, letter: DeadLetter, token: Hashable, shrink: int = 0) -> None:
        """Queue the DLQ copy of ``msg``; ``on_written(msg, token)`` runs once it is on Kafka.

        A copy too large for the DLQ topic shrinks instead of failing: first without the
        value (``kafcel.value_dropped_bytes`` says how big it was), then also without the
        record's own headers (``kafcel.headers_dropped`` counts them), then without its key
        (``kafcel.key_dropped_bytes``). The origin offset in the ``kafcel.*`` headers still
        points at the original. A write that still fails is retried, never raised: the
        bridge must not crash-loop on one record.
        """
        original = header_list(msg)
        size = str(len(msg.value() or b"")).encode()
        while True:
            headers = list(dlq_headers(letter, original if shrink < _NO_HEADERS else None))
            if shrink >= _NO_VALUE:
                headers.append((_DROPPED, size))
            if shrink >= _NO_HEADERS:
                headers.append((_HEADERS_DROPPED, str(len(original)).encode()))
            key = msg.key()
            if shrink >= _NO_KEY:
                headers.append((_KEY_DROPPED, str(len(key or b"")).encode()))
                key = None
            level = shrink

            def delivered(err: Any, _: Message, level: int = level) -> None:
                if err is None:
                    self._on_written(msg, token)
                    return
                log.warning("DLQ write failed (%s); retrying", err)
                too_big = err.code() == RdKafkaError.MSG_SIZE_TOO_LARGE
                self._retry.append((msg, letter, min(level + too_big, _NO_KEY), token))
                self._retry_at = time.monotonic() + _RETRY_AFTER_S

            try:
                self._producer.produce(
                    self._topic,
                    value=None if shrink >= _NO_VALUE else msg.value(),
                    key=key,
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                if "MSG_SIZE_TOO_LARGE" in str(exc) and shrink < _NO_KEY:
                    shrink += 1
                    continue
                error = KafkaError(f"cannot write to the DLQ topic: {exc}")
                log.error("%s; retrying in %.0fs", error, _RETRY_AFTER_S)
                self._retry.append((msg, letter, shrink, token))
                self._retry_at = time.monotonic() + _RETRY_AFTER_S
                return

    def retry_due(self) -> None:
        """Re-send the writes that failed, at most once a second."""
        if self._retry and time.monotonic() >= self._retry_at:
            retry, self._retry = self._retry, []
            for msg, letter, shrink, token in retry:
                self.write(msg, letter, token, shrink)
