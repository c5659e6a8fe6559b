"""Ordering gate: at most one unsettled task per key (or per partition); the rest wait.

``key`` mode keeps the effects of one key in submission order, across Celery retries,
while different keys of the same partition run in parallel. ``partition`` mode is the
classic one-at-a-time consumer. ``none`` dispatches everything at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from ..errors import ConfigError
from .tracker import TP

__all__ = ["MODES", "OrderingGate"]

MODES = ("key", "partition", "none")

T = TypeVar("T")
Slot = Hashable


class OrderingGate(Generic[T]):
    def __init__(self, *, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"ordering must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        # A slot is busy while it has an entry; the deque holds what waits behind it.
        self._slots: dict[Slot, deque[T]] = {}
        self._waiting = 0

    def slot_for(self, tp: TP, key: bytes | None) -> Slot | None:
        """The slot a record belongs to; ``None`` when it needs no ordering."""
        if self.mode == "key":
            # A record without a key has no order to keep; Kafka spreads such records anyway.
            return None if key is None else (tp, key)
        if self.mode == "partition":
            return tp
        return None

    def admit(self, slot: Slot | None, item: T) -> bool:
        """True if ``item`` may be dispatched now; otherwise it waits behind its slot."""
        if slot is None:
            return True
        queue = self._slots.get(slot)
        if queue is None:
            self._slots[slot] = deque()
            return True
        queue.append(item)
        self._waiting += 1
        return False

    def release(self, slot: Slot | None) -> T | None:
        """The running record of ``slot`` settled: the next item to dispatch, if any."""
        if slot is None:
            return None
        queue = self._slots.get(slot)
        if queue is None:
            return None
        if queue:
            self._waiting -= 1
            return queue.popleft()
        del self._slots[slot]
        return None

    def drop(self, tps: Iterable[TP]) -> None:
        """Forget the slots of revoked partitions; their records are re-read by the next owner."""
        gone = set(tps)
        for slot in [s for s in self._slots if _partition_of(s) in gone]:
            self._waiting -= len(self._slots.pop(slot))

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> int:
        return len(self._slots)


def _partition_of(slot: Slot) -> object:
    # key-mode slots are (tp, key); partition-mode slots are tp itself.
    if isinstance(slot, tuple) and len(slot) == 2 and isinstance(slot[0], tuple):
        return slot[0]
    return slot
