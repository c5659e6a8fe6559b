"""Records that must reach Kafka: queued, confirmed in ``poll()``, tried again while they
are still wanted. The bridge's dead letters and parked tasks, and the workers' dead
letters, go through here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Producer

from ..protocol.headers import Headers

__all__ = ["Write", "Writes", "produce"]

log = logging.getLogger("kafcel.delivery")

_RETRY_AFTER_S = 1.0

Callback = Callable[[], None]


def produce(
    producer: Producer, topic: str, *, on_delivery: Callable[..., None], **record: Any
) -> None:
    """Queue one record, serving delivery reports while librdkafka's queue is full (it
    empties as reports are served); other errors raise KafkaException."""
    while True:
        try:
            producer.produce(topic, on_delivery=on_delivery, **record)
            return
        except BufferError:
            producer.poll(0.1)


def _always() -> bool:
    return True


@dataclass(kw_only=True)
class Write:
    """One record and what to do when Kafka has it, or will never take it as it is."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers = field(default_factory=list)
    partition: int = -1
    written: Callback
    too_large: Callback  # larger than the producer or the topic takes
    # Tried again only while this says so (a record whose partition moved to another
    # bridge is that bridge's to write).
    wanted: Callable[[], bool] = _always


class Writes:
    """Sends :class:`Write`\\ s through ``producer``; one that fails for any reason but its
    size is kept and sent again by :meth:`retry_due`, never raised: the bridge must not
    crash-loop on one record."""

    def __init__(self, *, producer: Producer) -> None:
        self.producer = producer
        self._retry: list[Write] = []
        self._retry_at = 0.0

    def send(self, write: Write) -> None:
        def delivered(err: Any, _: Any) -> None:
            if err is None:
                write.written()
            elif err.code() == RdKafkaError.MSG_SIZE_TOO_LARGE:
                write.too_large()
            else:
                self.later(write, err)

        try:
            produce(
                self.producer,
                write.topic,
                value=write.value,
                key=write.key,
                headers=write.headers,
                partition=write.partition,
                on_delivery=delivered,
            )
        except KafkaException as exc:
            if "MSG_SIZE_TOO_LARGE" in str(exc):
                write.too_large()
            else:
                self.later(write, exc)

    def later(self, write: Write, why: object) -> None:
        """Send ``write`` again at the next :meth:`retry_due`, a second from now."""
        log.warning("writing to %s failed (%s); retrying", write.topic, why)
        self._retry.append(write)
        self._retry_at = time.monotonic() + _RETRY_AFTER_S

    def retry_due(self, *, now: bool = False) -> None:
        """Send again, at most once a second unless ``now``, the writes that failed and
        are still wanted."""
        if self._retry and (now or time.monotonic() >= self._retry_at):
            self.prune()
            retry, self._retry = self._retry, []
            for write in retry:
                self.send(write)

    def prune(self) -> None:
        """Forget the failed writes no longer wanted."""
        self._retry = [write for write in self._retry if write.wanted()]
