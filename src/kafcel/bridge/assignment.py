"""The partitions a bridge owns now, each assignment under a fence of its own.

A DLQ acknowledgement or an outcome settles a record only under the fence it was
dispatched with (``Origin.fence``), so an answer meant for an earlier assignment of a
partition cannot settle the record as read again, nor free its key early. A task
partition's scheduled partition (``bridge/schedule.py``) shares its fence.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer

from .tracker import TP

__all__ = ["Assignment", "finish_joining"]

log = logging.getLogger("kafcel.bridge")


class Assignment:
    def __init__(self, *, scheduled_topic: str | None) -> None:
        self._scheduled_topic = scheduled_topic
        self._instance = uuid.uuid4().hex[:12]
        self._count = 0
        self._fences: dict[TP, str] = {}
        # Owned task partitions and the committed offset found when each was assigned.
        self.owned: dict[TP, int] = {}

    def parked(self, tps: Iterable[TP]) -> list[TP]:
        """The scheduled partitions that go with these task partitions."""
        if self._scheduled_topic is None:
            return []
        return [(self._scheduled_topic, p) for _, p in tps]

    def assign(self, tps: list[TP]) -> None:
        self._count += 1
        fence = f"{self._instance}.{self._count}"
        for tp in [*tps, *self.parked(tps)]:
            self._fences[tp] = fence
        self.owned.update({tp: -1 for tp in tps})

    def revoke(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._fences.pop(tp, None)
            self.owned.pop(tp, None)

    def fence(self, tp: TP) -> str:
        """The fence of ``tp``'s current assignment ("" if not owned)."""
        return self._fences.get(tp, "")

    def current(self, tp: TP, fence: str) -> bool:
        """Whether ``fence`` is ``tp``'s current assignment's."""
        return tp in self._fences and self._fences[tp] == fence


def finish_joining(consumer: Consumer, joined: Callable[[], bool], *, timeout_s: float) -> None:
    """Before leaving the group, let a join in progress complete (``joined()`` turns true
    in the assign callback, which librdkafka runs inside consume()).

    Tansu never completes a rebalance whose joining member left before its JoinGroup was
    answered: every later member waits forever (docs/design-notes.md). A bridge stopped
    seconds after it started on Tansu therefore joins first, then leaves; Apache Kafka
    takes the leave as it comes.
    """
    deadline = time.monotonic() + timeout_s
    if not joined():
        log.info("waiting for the group join to complete before leaving")
    while not joined() and time.monotonic() < deadline:
        consumer.consume(1, timeout=0.02)
