"""The bridge's side of scheduled tasks (``schedule.py``): it parks what is due later,
follows the scheduled partitions of its task partitions from their commit, hands back
what falls due (within the in-flight limits), and parks anew what has waited long."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from ..protocol.headers import header_list
from .assignment import Assignment
from .dispatch import Dispatch
from .schedule import Parked, Parker, ScheduledReader
from .sequence import SequenceGuard, position
from .tracker import TP, Budget, OffsetTracker

__all__ = ["Scheduling"]

log = logging.getLogger("kafcel.bridge")


class Scheduling:
    def __init__(
        self,
        *,
        reader: ScheduledReader,
        parker: Parker,
        tracker: OffsetTracker,
        assignment: Assignment,
        budget: Budget,
        admit: Callable[[Dispatch], None],
        settle: Callable[[TP, int], None],
        due: Callable[[Message], None],
    ) -> None:
        self._reader = reader
        self._parker = parker
        self._tracker = tracker
        self._assignment = assignment
        self._budget = budget
        self._admit = admit
        self._settle = settle
        self._due = due
        # Scheduled partitions whose committed offset could not be read yet.
        self._to_follow: list[TP] = []
        self.parked = 0

    def __len__(self) -> int:
        return len(self._reader)

    @property
    def sequence(self) -> SequenceGuard:
        return self._reader.sequence

    def park(self, item: Dispatch) -> None:
        """Due later: the task waits in the scheduled topic, and its record settles."""

        def current() -> bool:
            return self._assignment.current(item.tp, item.fence)

        def written() -> None:
            if current():
                self.parked += 1
                self._settle(item.tp, item.offset)

        def refused() -> None:
            # Larger than the scheduled topic takes: it waits in flight instead.
            if current():
                self._admit(item)

        self._parker.park(item.msg, item.parked(), written=written, refused=refused, wanted=current)

    def follow(self, consumer: Consumer, tps: list[TP]) -> None:
        """Follow the scheduled partitions of these newly assigned task partitions."""
        self._to_follow += self._assignment.parked(tps)
        self._follow(consumer)

    def forget(self, gone: Iterable[TP], topic: str) -> None:
        gone = set(gone)
        self._to_follow = [tp for tp in self._to_follow if tp not in gone]
        self._reader.unfollow(p for t, p in gone if t == topic)

    def _follow(self, consumer: Consumer) -> None:
        """From their commit; never from the start on a guess: tasks run long ago, whose
        done markers expired, would run again."""
        if not self._to_follow:
            return
        asked = [TopicPartition(*tp) for tp in self._to_follow]
        try:
            committed = consumer.committed(asked, timeout=5)
        except KafkaException as exc:
            log.warning("cannot read the scheduled partitions' commit yet: %s", exc)
            return
        self._to_follow = []
        self._reader.follow({p.partition: max(p.offset, 0) for p in committed})

    def turn(self, consumer: Consumer) -> None:
        self._follow(consumer)
        reader = self._reader
        for msg in reader.read():
            # Tracked for their commit, not counted in flight: they wait in Kafka.
            self._tracker.add(*position(msg), counted=False)
        # Due ones take room in flight like any record: never past the limits.
        due = reader.due(limit=max(self._budget.records - self._tracker.in_flight(), 0))
        for index, msg in enumerate(due):
            if self._tracker.in_flight_bytes() >= self._budget.size:
                reader.again(due[index:])
                break
            # Handed out: it holds its bytes in the bridge now.
            tp, offset = position(msg)
            self._tracker.count(tp, offset, len(msg.value() or b"") + len(msg.key() or b""))
            self._due(msg)
        for msg in reader.stale():
            self._repark(msg)

    def _repark(self, msg: Message) -> None:
        """Parked long ago: parked anew at the end, and this copy settles."""
        tp, offset = position(msg)
        parked = Parked.from_headers(header_list(msg))
        fence = self._assignment.fence(tp)
        reader = self._reader

        def current() -> bool:
            return self._assignment.current(tp, fence)

        def written() -> None:
            if current():
                self._settle(tp, offset)

        def refused() -> None:
            if current():
                reader.again([msg])  # it stays where it is

        if parked is None:
            reader.again([msg])
            return
        self._parker.park(msg, parked, written=written, refused=refused, wanted=current)

    def close(self) -> None:
        self._reader.close()
