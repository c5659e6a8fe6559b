"""The bridge's reader of the results topic: outcomes the workers published.

It reads every partition from the end as it stood at start (an outcome written later is
seen; older ones belong to records already committed, or that are dispatched again and
re-announced by the worker's once-guard), and never steps over a missing offset.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from ..results import Outcome
from .sequence import SequenceGuard, position, seek_to

__all__ = ["OutcomeReader"]

log = logging.getLogger("kafcel.bridge")

_BATCH = 1000
_MAX_BATCHES = 20


class OutcomeReader:
    def __init__(
        self, *, config: dict[str, Any], group_id: str, topic: str, gap_wait_s: float
    ) -> None:
        self._consumer = Consumer(
            {
                # Tansu holds a fetch for all of this even when outcomes arrive meanwhile;
                # with a high fetch.min.bytes each fetch lasts that long: 100 a second at
                # most, however busy. Before **config: KAFCEL_KAFKA_CONFIG may raise the
                # wait for a broker that answers as soon as records arrive (Apache Kafka).
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1 << 20,
                **config,
                "group.id": f"{group_id}.results.{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                # Out of range (retention emptied the topic): re-read rather than skip ahead.
                "auto.offset.reset": "earliest",
            }
        )
        self._seq = SequenceGuard(
            seek=lambda tp, off: seek_to(self._consumer, tp, off), gap_wait_s=gap_wait_s
        )
        meta = self._consumer.list_topics(topic, timeout=10)
        start = []
        for p in sorted(meta.topics[topic].partitions):
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            # Tansu's watermark may be low by a batch: re-reading a few old outcomes is harmless.
            start.append(TopicPartition(topic, p, max(high - 1, low, 0)))
        self._consumer.assign(start)
        for tp in start:
            self._seq.expect((topic, tp.partition), tp.offset)

    @property
    def reseeks(self) -> int:
        return self._seq.reseeks

    def read(self) -> list[Outcome]:
        """Outcomes available now, without waiting."""
        outcomes: list[Outcome] = []
        for _ in range(_MAX_BATCHES):
            msgs = self._consumer.consume(_BATCH, timeout=0)
            if not msgs:
                break
            for msg in msgs:
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                if not self._seq.admit(*position(msg)):
                    continue
                try:
                    outcomes.append(Outcome.decode(value))
                except Exception:
                    log.warning("ignoring a non-kafcel record on %s", msg.topic())
        return outcomes

    def close(self) -> None:
        self._consumer.close()
