"""The partitions a bridge owns now, each assignment under a fence of its own.

A DLQ acknowledgement or an outcome settles a record only under the fence it was
dispatched with (``Origin.fence``), so an answer meant for an earlier assignment of a
partition cannot settle the record as read again, nor free its key early. A task
partition's scheduled partition (``bridge/schedule.py``) shares its fence.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from .tracker import TP

__all__ = ["Assignment"]

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
