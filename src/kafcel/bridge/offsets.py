"""Committing what is settled, and pausing the fetch while too much is not.

The tracker says how far each partition may be committed; this commits that far
(asynchronously every ``commit_interval_s``, synchronously on revoke and at shutdown),
records what Kafka confirmed, hands the task ids committed past to the marker compaction,
and pauses the bridge's partitions while records or bytes in flight reach their limits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError

from .markers import CommittedMarkers
from .tracker import TP, Budget, OffsetTracker

__all__ = ["Offsets"]

log = logging.getLogger("kafcel.bridge")

# A synchronous commit sent while the group rebalances gets one of these; it succeeds once
# this member has rejoined, which its next consume() calls bring about.
_REJOINING = frozenset(
    {
        RdKafkaError.REBALANCE_IN_PROGRESS,
        RdKafkaError.ILLEGAL_GENERATION,
        RdKafkaError.STALE_MEMBER_EPOCH,
    }
)
_REJOIN_POLL_S = 0.02


class Offsets:
    def __init__(
        self, *, tracker: OffsetTracker, markers: CommittedMarkers, budget: Budget
    ) -> None:
        self.tracker = tracker
        self.markers = markers
        self._budget = budget
        self.commits = 0
        self.paused = False

    def commit(
        self,
        consumer: Consumer,
        *,
        asynchronous: bool,
        only: list[TP] | None = None,
        quiet: bool = False,
    ) -> bool:
        """Commit what is settled; False only when the group was rebalancing, so the same
        commit succeeds after this member rejoins."""
        tracker = self.tracker
        if asynchronous:
            # Marked committed only when the broker confirms (in on_commit).
            offsets = tracker.pending_commits()
        else:
            # Revoke and shutdown commit everything settled, whatever earlier async
            # commits claimed, so a lost async commit is repaired here.
            offsets = {
                tp: off
                for tp in tracker.partitions()
                if (off := tracker.committable(tp)) is not None
            }
        if only is not None:
            offsets = {tp: off for tp, off in offsets.items() if tp in only}
        if not offsets:
            return True
        batch = [TopicPartition(t, p, off) for (t, p), off in offsets.items()]
        try:
            if asynchronous:
                consumer.commit(offsets=batch, asynchronous=True)
            else:
                consumer.commit(offsets=batch, asynchronous=False)
        except KafkaException as exc:
            # A failed commit loses nothing: the records are re-read and the once-guard
            # absorbs the overlap. Log and go on.
            log.log(logging.DEBUG if quiet else logging.WARNING, "commit failed: %s", exc)
            error = exc.args[0] if exc.args else None
            return not (isinstance(error, RdKafkaError) and error.code() in _REJOINING)
        self.commits += 1
        if not asynchronous:
            for tp, off in offsets.items():
                self._committed(tp, off)
        return True

    def commit_before_leaving(self, consumer: Consumer, *, within_s: float) -> None:
        """The shutdown commit, tried again while the group rebalances: a bridge stopped
        as another joins (the cooperative protocol's second round) would otherwise leave
        its settled records to be read again by their next owner. Its partitions are
        paused, and a revoke meanwhile commits them in the callback."""
        deadline = time.monotonic() + within_s
        tries = 1
        # Logged once: the retries while the group settles would be one line per poll.
        while not self.commit(consumer, asynchronous=False, quiet=tries > 1):
            if time.monotonic() >= deadline:
                log.warning("the shutdown commit was refused %d times; left to re-read", tries)
                return
            consumer.consume(1, timeout=_REJOIN_POLL_S)
            tries += 1

    def skip_markers(self, consumer: Consumer, tps: Iterable[TP]) -> None:
        """Let the commit follow the consumer's position past transaction markers and
        aborted records, which are never delivered: behind a transactional producer's
        last marker the lag would otherwise never reach 0.

        Apache Kafka only, and only right after a turn that handled every record it
        fetched: librdkafka moves the position past a marker in order with the records,
        so nothing below it is a record the bridge has not seen (a seek clears it). On
        Tansu a record below it may still become visible (design-notes.md).
        """
        parts = [TopicPartition(t, p) for t, p in tps]
        if not parts:
            return
        try:
            found = consumer.position(parts)
        except KafkaException as exc:
            log.warning("cannot read the consumer's positions: %s", exc)
            return
        for part in found:
            if part.offset >= 0:
                self.tracker.skip_to((part.topic, part.partition), part.offset)

    def on_commit(self, err: Any, partitions: list[TopicPartition]) -> None:
        """librdkafka's report of an asynchronous commit."""
        if err is not None:
            log.warning("asynchronous commit failed: %s", err)
            return
        for p in partitions:
            if p.error is None and p.offset >= 0:
                self._committed((p.topic, p.partition), p.offset)

    def _committed(self, tp: TP, offset: int) -> None:
        self.tracker.mark_committed(tp, offset)
        self.markers.committed(tp, offset)

    def unpause_leaving(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Clear the pause of partitions being revoked or lost. librdkafka keeps a
        partition's pause into its next assignment (librdkafka #1849), and
        :meth:`backpressure` only resumes what is assigned when it resumes: a partition
        that left paused and came back would never be fetched again. Partitions assigned
        while the bridge is paused are paused again on assignment."""
        if not partitions:
            return
        try:
            consumer.resume(partitions)
        except KafkaException as exc:
            log.warning("could not clear the pause of leaving partitions: %s", exc)

    def backpressure(
        self, consumer: Consumer, *, assignment_changed: bool, broker_down: bool = False
    ) -> None:
        """Pause every partition at ``max_in_flight`` records or ``max_in_flight_bytes``,
        or while Celery's broker is down (nothing fetched could be dispatched); resume at
        half of both, the broker back."""
        in_flight, size = self.tracker.in_flight(), self.tracker.in_flight_bytes()
        full = in_flight >= self._budget.records or size >= self._budget.size
        try:
            if not self.paused and (full or broker_down):
                consumer.pause(consumer.assignment())
                self.paused = True
                log.info(
                    "paused: %d records, %d bytes in flight (max %d, %d)%s",
                    in_flight,
                    size,
                    self._budget.records,
                    self._budget.size,
                    ", Celery's broker down" if broker_down else "",
                )
            elif self.paused and assignment_changed:
                consumer.pause(consumer.assignment())
            elif (
                self.paused
                and not broker_down
                and in_flight <= self._budget.records // 2
                and size <= self._budget.size // 2
            ):
                consumer.resume(consumer.assignment())
                self.paused = False
                log.info("resumed: %d records, %d bytes in flight", in_flight, size)
        except KafkaException as exc:
            log.warning("pause/resume failed: %s", exc)
