"""Offset-gap detection: never step over a record that is not visible yet.

Apache Kafka only exposes records below the high watermark, so a consumer sees every
offset of a partition in order, and a jump in offsets is a gap that holds no record:
transaction markers, aborted transactions (read_committed), compaction. Tansu's memory
storage does not: with two producers writing one partition, offset N+1 can become
readable before N (measured here: one record in a thousand skipped by a tailing
consumer). A skipped task record would be committed past without running; a skipped
outcome would stall its partition.

So on a broker that needs the Tansu handling (``broker.detect``), a fetched offset that
jumps ahead of the next expected one is discarded and the consumer sent back to the
missing offset, every 50 ms (:meth:`SequenceGuard.tick`, so a partition with nothing new
to deliver is looked at again too), until the record appears or ``gap_wait_s`` passes.
Then the gap is taken as legitimate, at the first record delivered after a seek back: the
first visible past the gap, so nothing between is stepped over. With no wait (Apache
Kafka) a jump is taken at once: no seek, no record held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from ..errors import KafkaError
from .tracker import TP

__all__ = [
    "SequenceGuard",
    "follow",
    "guard",
    "position",
    "put_back",
    "seek_to",
    "unfollow",
]

log = logging.getLogger("kafcel.bridge")

_RESEEK_EVERY_S = 0.05


@dataclass
class _Gap:
    expected: int
    since: float
    last_seek: float
    # Sent back by tick() and nothing delivered since: the next record of the partition
    # is the first visible at or past the missing offset.
    fresh: bool = False


class SequenceGuard:
    """Per partition: the next offset that must be seen before any later one.

    ``gap_wait_s`` 0 takes every jump at once (Apache Kafka, where nothing is ever
    visible out of order); otherwise a jump is looked into for that long.
    """

    def __init__(
        self,
        *,
        seek: Callable[[TP, int], bool],
        gap_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if gap_wait_s < 0:
            raise ValueError("gap_wait_s must be >= 0")
        self._seek = seek
        self._wait_s = gap_wait_s
        self._clock = clock
        self._expected: dict[TP, int] = {}
        self._gaps: dict[TP, _Gap] = {}
        self.gaps_accepted = 0
        self.reseeks = 0
        self._waited_s = 0.0

    @property
    def waited_s(self) -> float:
        """Seconds partitions were held back on gaps, summed over partitions, open gaps
        included: what looking for records that are not visible yet has cost."""
        now = self._clock()
        return self._waited_s + sum(now - gap.since for gap in self._gaps.values())

    def _close(self, tp: TP) -> None:
        gap = self._gaps.pop(tp, None)
        if gap is not None:
            self._waited_s += self._clock() - gap.since

    def expect(self, tp: TP, offset: int) -> None:
        """The next record of ``tp`` must be ``offset`` (after assign or seek)."""
        self._expected[tp] = offset
        self._close(tp)

    def expected(self, tp: TP) -> int | None:
        """The next offset ``tp`` must deliver, if known."""
        return self._expected.get(tp)

    def forget(self, tp: TP) -> None:
        self._expected.pop(tp, None)
        self._close(tp)

    def admit(self, tp: TP, offset: int) -> bool:
        """True if this record is next in line and may be processed."""
        expected = self._expected.get(tp)
        if expected is None or offset == expected:
            self._expected[tp] = offset + 1
            self._close(tp)
            return True
        if offset < expected:
            return False  # fetched before our seek took effect: already handled
        if self._wait_s == 0:
            self.gaps_accepted += 1
            self._expected[tp] = offset + 1
            return True
        now = self._clock()
        gap = self._gaps.get(tp)
        if gap is None or gap.expected != expected:
            self._close(tp)
            self._gaps[tp] = _Gap(expected, now, now)
            self._reseek(tp, expected)
            return False
        first, gap.fresh = gap.fresh, False
        if first and now - gap.since >= self._wait_s:
            log.warning(
                "offsets %d..%d of %s[%d] never appeared; taking the gap as legitimate",
                expected,
                offset - 1,
                tp[0],
                tp[1],
            )
            self.gaps_accepted += 1
            self._expected[tp] = offset + 1
            self._close(tp)
            return True
        return False

    def tick(self) -> None:
        """Send each partition held on a gap back to its missing offset again, at most
        every 50 ms: call once per fetch loop, between consume() calls."""
        if not self._gaps:
            return
        now = self._clock()
        for tp, gap in self._gaps.items():
            if now - gap.last_seek >= _RESEEK_EVERY_S:
                gap.last_seek = now
                # Only a seek that took makes the next record the first visible past the
                # gap; after a failed one it may be a record fetched beyond it.
                gap.fresh = self._reseek(tp, gap.expected)

    def _reseek(self, tp: TP, offset: int) -> bool:
        self.reseeks += 1
        return self._seek(tp, offset)


def guard(
    consumer: Callable[[], Consumer | None], *, gap_wait_s: float, tansu: bool
) -> SequenceGuard:
    """The sequence guard of the consumer ``consumer()`` returns (it may be replaced):
    the gap wait is Tansu handling, and on Apache Kafka a jump is taken at once."""
    return SequenceGuard(
        seek=lambda tp, off: seek_to(consumer(), tp, off), gap_wait_s=gap_wait_s if tansu else 0.0
    )


def seek_to(consumer: Consumer | None, tp: TP, offset: int) -> bool:
    """Send ``consumer`` back to ``offset`` of ``tp``; False if the seek failed."""
    assert consumer is not None
    try:
        consumer.seek(TopicPartition(tp[0], tp[1], offset))
    except KafkaException as exc:
        log.warning("seek %s[%d] to %d failed: %s", tp[0], tp[1], offset, exc)
        return False
    return True


def follow(consumer: Consumer, seq: SequenceGuard, topic: str, starts: dict[int, int]) -> None:
    """Add these partitions of ``topic`` to ``consumer``'s manual assignment, each read
    from its offset, which ``seq`` then expects first."""
    if not starts:
        return
    parts = [TopicPartition(topic, p, offset) for p, offset in sorted(starts.items())]
    consumer.incremental_assign(parts)
    for part in parts:
        seq.expect((topic, part.partition), part.offset)


def unfollow(
    consumer: Consumer, seq: SequenceGuard, topic: str, partitions: Iterable[int]
) -> list[int]:
    """Take these partitions of ``topic`` out of ``consumer``'s assignment; those it had."""
    owned = {tp.partition for tp in consumer.assignment()}
    gone = sorted(set(partitions) & owned)
    if gone:
        consumer.incremental_unassign([TopicPartition(topic, p) for p in gone])
        for p in gone:
            seq.forget((topic, p))
    return gone


def put_back(consumer: Consumer | None, seq: SequenceGuard, msgs: list[Message]) -> None:
    """Fetched but not taken: ``consumer`` reads these again from the first of each
    partition, and ``seq`` expects them there.

    A seek that fails stops the bridge (KafkaError): the consumer would go on past
    records nobody handled, and on Apache Kafka the jump would be taken as a gap and
    committed past. Stopped, the partition's next owner reads from the last commit.
    """
    first: dict[TP, int] = {}
    for msg in msgs:
        if msg.error() is None:
            tp, offset = position(msg)
            first.setdefault(tp, offset)
    for tp, offset in first.items():
        if not seek_to(consumer, tp, offset):
            raise KafkaError(f"cannot read {tp[0]}[{tp[1]}] again from offset {offset}")
        seq.expect(tp, offset)


def position(msg: Message) -> tuple[TP, int]:
    """Topic, partition and offset of a fetched message (never None once fetched)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return (topic, partition), offset
