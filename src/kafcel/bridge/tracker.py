"""Offset tracking: which fetched records are still in flight and how far it is safe to commit.

Kafka commits a single position per partition, while kafcel settles records out of order
(tasks finish whenever they finish). The bridge may therefore only commit up to the lowest
record that has not settled yet: committing past it would lose that task if the partition
moved to another bridge or this one crashed. This module keeps that bookkeeping; it is pure
logic, with no Kafka import, so it can be tested exhaustively and runs without locks on the
consumer thread.

Per partition, offsets are accepted only in increasing order: a consumer reads a partition
sequentially, so an offset at or below the highest one already added was seen before since
the assignment (it is in flight or settled) and must not be dispatched again. Because of that
ordering, a deque of added offsets is already sorted, and the lowest unsettled offset is its
head once settled entries are dropped from the front: add and settle are amortised O(1).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["TP", "Budget", "OffsetTracker"]

TP: TypeAlias = tuple[str, int]
"""A topic partition, as ``(topic, partition)``."""

# Compaction slack: tiny deques are not worth rebuilding even if mostly settled.
_COMPACT_SLACK = 64
_UNCOUNTED = -1


class _Partition:
    """Tracking state of one assigned partition (since its last assignment)."""

    __slots__ = ("committed", "high", "order", "unsettled")

    def __init__(self) -> None:
        # Added offsets in increasing order. Settled entries behind the head are removed
        # lazily; the head itself is always unsettled, so it is the commit limit.
        self.order: deque[int] = deque()
        # Unsettled offsets and the bytes each record holds in memory; _UNCOUNTED for one
        # left out of the in-flight totals (a parked task, waiting in Kafka).
        self.unsettled: dict[int, int] = {}
        self.high = -1
        self.committed = -1

    def drop_settled_head(self) -> None:
        order, unsettled = self.order, self.unsettled
        while order and order[0] not in unsettled:
            order.popleft()

    def compact(self) -> None:
        # One stuck record at the head keeps every later settled offset in the deque; with a
        # fast partition behind it that is unbounded. Rebuilding when most entries are settled
        # keeps memory O(in flight) at amortised O(1) per settle: each rebuild costs the
        # deque's length, less than twice the settles that made its entries stale.
        if len(self.order) > 2 * len(self.unsettled) + _COMPACT_SLACK:
            unsettled = self.unsettled
            self.order = deque(o for o in self.order if o in unsettled)

    def committable(self) -> int | None:
        if self.high < 0:
            return None
        return self.order[0] if self.order else self.high + 1


@dataclass
class Budget:
    """Fetched-but-unsettled records and bytes above which the bridge stops fetching.
    Lanes (``bridge/lanes.py``) change a running bridge's as topics come and go."""

    records: int
    size: int


class OffsetTracker:
    """Which offsets of each partition are fetched but not yet settled, and how far it is safe
    to commit.

    The lifecycle of a record is :meth:`add` (fetched) then :meth:`settle` (its task reached a
    final state, or the record went to the DLQ). :meth:`committable` is the Kafka commit offset
    (the next offset to read) that loses nothing: the lowest unsettled offset, or the highest
    added offset + 1 when nothing is in flight. :meth:`revoke` forgets a partition; the next
    owner re-reads from the committed offset and deterministic task ids absorb the overlap.

    Not thread-safe: the bridge drives it from its consumer thread only.
    """

    __slots__ = ("_in_flight", "_in_flight_bytes", "_parts")

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}
        # Kept as counters so backpressure can read them for every record in O(1).
        self._in_flight = 0
        self._in_flight_bytes = 0

    def add(self, tp: TP, offset: int, size: int = 0, *, counted: bool = True) -> bool:
        """Track a fetched record; return ``False`` and change nothing if it must be skipped.

        ``size`` is what the record holds in memory while in flight (its bytes). A record
        not ``counted`` (a parked task, which waits in Kafka, not in memory) is tracked and
        committed alike but left out of the totals until :meth:`count`.
        A record is skipped when its offset is at or below the highest offset already added
        for ``tp`` (a re-fetch after a seek: the record is in flight or settled) or below the
        offset last recorded by :meth:`mark_committed`. After :meth:`revoke` a partition starts
        afresh, so the re-read from the committed offset is accepted.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        elif offset <= part.high or offset < part.committed:
            return False
        part.order.append(offset)
        part.unsettled[offset] = size if counted else _UNCOUNTED
        part.high = offset
        if counted:
            self._in_flight += 1
            self._in_flight_bytes += size
        return True

    def count(self, tp: TP, offset: int, size: int) -> None:
        """An uncounted record now holds ``size`` bytes here (a parked task fell due)."""
        part = self._parts.get(tp)
        if part is not None and part.unsettled.get(offset) == _UNCOUNTED:
            part.unsettled[offset] = size
            self._in_flight += 1
            self._in_flight_bytes += size

    def settle(self, tp: TP, offset: int) -> bool:
        """Mark a record final; ``True`` only the first time for an offset in flight.

        Outcomes can arrive more than once (redelivered results, redispatched tasks) or after
        the partition was revoked, so anything unknown or already settled is ignored.
        """
        part = self._parts.get(tp)
        if part is None or offset not in part.unsettled:
            return False
        size = part.unsettled.pop(offset)
        if size != _UNCOUNTED:
            self._in_flight_bytes -= size
            self._in_flight -= 1
        if part.order[0] == offset:
            part.drop_settled_head()
        else:
            part.compact()
        return True

    def committable(self, tp: TP) -> int | None:
        """The commit offset that is safe for ``tp``; ``None`` if nothing was added since the
        last revoke."""
        part = self._parts.get(tp)
        return None if part is None else part.committable()

    def pending_commits(self) -> dict[TP, int]:
        """Committable offsets that are ahead of what :meth:`mark_committed` recorded."""
        pending: dict[TP, int] = {}
        for tp, part in self._parts.items():
            offset = part.committable()
            if offset is not None and offset > part.committed:
                pending[tp] = offset
        return pending

    def mark_committed(self, tp: TP, offset: int) -> None:
        """Record that ``offset`` was committed for ``tp`` (so it is no longer pending).

        The highest recorded offset wins: asynchronous commits can complete out of order, and
        an older one must not make a newer offset pending again. A partition with nothing added
        since its last revoke is left alone, so a late commit callback for a revoked partition
        cannot bring it back into :meth:`partitions`.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        part = self._parts.get(tp)
        if part is not None and offset > part.committed:
            part.committed = offset

    def skip_to(self, tp: TP, offset: int) -> None:
        """Nothing below ``offset`` of ``tp`` is a record still to come: the offsets past
        the highest added hold no record (transaction markers, aborted transactions), so
        the commit may reach ``offset`` once what is in flight below it settles."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if offset - 1 > part.high:
            part.high = offset - 1

    def committed(self, tp: TP) -> int | None:
        """The highest offset recorded by :meth:`mark_committed` since the last revoke."""
        part = self._parts.get(tp)
        return None if part is None or part.committed < 0 else part.committed

    def revoke(self, tp: TP) -> int | None:
        """Forget ``tp``; return its committable offset as it was (for the final commit)."""
        part = self._parts.pop(tp, None)
        if part is None:
            return None
        counted = [size for size in part.unsettled.values() if size != _UNCOUNTED]
        self._in_flight -= len(counted)
        self._in_flight_bytes -= sum(counted)
        return part.committable()

    def in_flight(self, tp: TP | None = None) -> int:
        """Unsettled records of ``tp``, or of every partition when ``tp`` is ``None``."""
        if tp is None:
            return self._in_flight
        part = self._parts.get(tp)
        return 0 if part is None else len(part.unsettled)

    def in_flight_bytes(self) -> int:
        """Bytes of the unsettled records of every partition (as given to :meth:`add`)."""
        return self._in_flight_bytes

    def partitions(self) -> list[TP]:
        """Partitions with records added since their last revoke, sorted."""
        return sorted(self._parts)

    def lowest_unsettled(self, tp: TP) -> int | None:
        """The lowest offset of ``tp`` still in flight, or ``None``."""
        part = self._parts.get(tp)
        if part is None or not part.order:
            return None
        return part.order[0]
