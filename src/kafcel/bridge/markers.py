"""Which done markers may shrink: those of records the bridge has committed past.

Until its offset is committed a record can be read again (a crash, a rebalance) and its
re-dispatch re-announces the whole stored outcome; after the commit only duplicates can
come, and the once-guard needs only the status to stop them (``OnceGuard.compact``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from .tracker import TP

__all__ = ["CommittedMarkers"]

# Task ids remembered per partition while their offsets wait for a commit (a stuck head
# can hold many settled records behind it): past this, a marker of that partition simply
# stays whole until its TTL; the other partitions' markers still shrink.
_LIMIT_PER_PARTITION = 50_000


class CommittedMarkers:
    def __init__(self, *, limit_per_partition: int = _LIMIT_PER_PARTITION) -> None:
        self._limit = limit_per_partition
        self._settled: dict[TP, list[tuple[int, str]]] = {}
        self._ready: list[str] = []

    def settled(self, tp: TP, offset: int, task_id: str) -> None:
        heap = self._settled.setdefault(tp, [])
        if len(heap) < self._limit:
            heapq.heappush(heap, (offset, task_id))

    def committed(self, tp: TP, offset: int) -> None:
        """``tp`` is committed up to ``offset`` (exclusive)."""
        heap = self._settled.get(tp)
        while heap and heap[0][0] < offset:
            self._ready.append(heapq.heappop(heap)[1])

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._settled.pop(tp, None)

    def take(self) -> list[str]:
        ready, self._ready = self._ready, []
        return ready
