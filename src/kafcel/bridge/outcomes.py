"""The bridge's reader of the results topic: outcomes the workers published.

Workers write each outcome to the results partition numbered like its request's task
partition (the topics are co-partitioned, checked when the bridge starts), so a bridge
follows only the results partitions of the task partitions it owns: reading grows with
a bridge's share of the work, not with the whole group's. A partition is read from its
end as it stood when followed (an outcome written later is seen; older ones belong to
records already committed, or dispatched again and re-announced by the worker's
once-guard), and never past a missing offset.

Tansu answers a fetch when ``fetch.wait.max.ms`` runs out, and finding the fetch offset
costs it time in proportion to the partition's batches; once that exceeds the wait, every
answer is empty and the reader would starve (seen at about 60,000 outcome batches with a
10 ms wait). So with the Tansu handling (``tansu``) the reader starts with a short wait
(outcomes settle quickly) and, when it gets nothing while the partition's end is ahead of
it, starts again with four times the wait, up to 1 s. Apache Kafka answers as soon as an
outcome arrives: none of that applies there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from ..errors import KafcelError
from ..kafka.config import fetch_config
from ..protocol.outcome import Outcome
from .sequence import SequenceGuard, follow, guard, position, unfollow

__all__ = ["OutcomeReader"]

log = logging.getLogger("kafcel.bridge")

_BATCH = 1000
_MAX_BATCHES = 20
_FIRST_WAIT_MS = 10
_MAX_WAIT_MS = 1000
# Nothing read for this long while the partition's end is ahead: the fetches starve.
_STARVED_AFTER_S = 2.0
# Unreadable records logged one by one per window; a topic full of them counts the rest.
_UNREADABLE_LOGGED = 20
_UNREADABLE_WINDOW_S = 60.0


class OutcomeReader:
    def __init__(
        self,
        *,
        config: dict[str, Any],
        group_id: str,
        topic: str,
        gap_wait_s: float,
        tansu: bool,
        batch_ms: int = 0,
    ) -> None:
        """``batch_ms``: fetches wait this long to carry several outcomes (0: answered as
        each arrives, on Apache Kafka); Tansu waits at least ``_FIRST_WAIT_MS`` anyway."""
        if batch_ms < 0:
            raise ValueError(f"batch_ms must be >= 0, got {batch_ms}")
        self._config = config
        self._group_id = group_id
        self._topic = topic
        self._tansu = tansu
        self._batch = batch_ms > 0
        self._wait_ms = max(_FIRST_WAIT_MS, batch_ms) if tansu else batch_ms
        self._consumer = self._new_consumer()
        self._seq = guard(lambda: self._consumer, gap_wait_s=gap_wait_s, tansu=tansu)
        self._last_read = time.monotonic()
        self.unreadable = 0
        self._unreadable_window = 0.0
        self._unreadable_logged = 0

    def follow(self, partitions: Iterable[int]) -> None:
        """Read these results partitions too (their task partitions were assigned)."""
        starts: dict[int, int] = {}
        for p in sorted(set(partitions)):
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, p), timeout=10
                )
                # Tansu's watermark may be low by a batch: re-reading a few old outcomes
                # is harmless.
                offset = max(high - 1 if self._tansu else high, low, 0)
            except KafkaException as exc:
                # Never start past an outcome that may be awaited: read it all instead.
                log.warning(
                    "cannot read the end of %s[%d] (%s): reading it whole", self._topic, p, exc
                )
                offset = 0
            starts[p] = offset
        follow(self._consumer, self._seq, self._topic, starts)

    def unfollow(self, partitions: Iterable[int]) -> None:
        """Stop reading these results partitions (their task partitions were revoked)."""
        unfollow(self._consumer, self._seq, self._topic, partitions)

    def _new_consumer(self) -> Consumer:
        return Consumer(
            {
                **fetch_config(self._wait_ms, tansu=self._tansu, batch=self._batch),
                **self._config,
                "group.id": f"{self._group_id}.results.{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                # Out of range (retention emptied the topic): re-read rather than skip ahead.
                "auto.offset.reset": "earliest",
            }
        )

    def watch_starvation(self, *, expecting: bool) -> None:
        """Call with ``expecting`` when outcomes are awaited: a reader that reads nothing
        while its partitions' ends are ahead of it starts again with a longer wait."""
        now = time.monotonic()
        if not expecting or not self._tansu or self._wait_ms >= _MAX_WAIT_MS:
            self._last_read = now
            return
        if now - self._last_read < _STARVED_AFTER_S:
            return
        self._last_read = now
        ends = self.ends()  # None: the broker is busy or away, check again later
        # A partition with no position yet cannot starve.
        if ends is None or not self._behind(ends, unpositioned=False):
            return
        positions = [
            TopicPartition(tp.topic, tp.partition, self._resume_at(tp))
            for tp in self._consumer.assignment()
        ]
        self._wait_ms = min(self._wait_ms * 4, _MAX_WAIT_MS)
        log.warning(
            "outcome fetches come back empty with outcomes waiting (a broker that needs "
            "longer to find the offset): reading again with fetch.wait.max.ms=%d",
            self._wait_ms,
        )
        self._consumer.close()
        self._consumer = self._new_consumer()
        self._consumer.incremental_assign(positions)

    def _resume_at(self, tp: TopicPartition) -> int:
        """The next offset to read: the sequence guard's, else the consumer's position."""
        expected = self._seq.expected((tp.topic, tp.partition))
        if expected is None:
            (here,) = self._consumer.position([tp])
            expected = here.offset
        return int(expected)

    @property
    def sequence(self) -> SequenceGuard:
        return self._seq

    def read(self) -> list[Outcome]:
        """Outcomes available now, without waiting."""
        outcomes: list[Outcome] = []
        self._seq.tick()
        for _ in range(_MAX_BATCHES):
            msgs = self._consumer.consume(_BATCH, timeout=0)
            if not msgs:
                break
            self._last_read = time.monotonic()
            for msg in msgs:
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                if not self._seq.admit(*position(msg)):
                    continue
                try:
                    outcomes.append(Outcome.decode(value))
                except KafcelError as exc:
                    self._unreadable(msg, exc)
        return outcomes

    def _unreadable(self, msg: Message, exc: KafcelError) -> None:
        """Log where a record that is no outcome sits: if it was meant to settle a task,
        an operator can find it (and the record it held, re-announced by redispatch)."""
        self.unreadable += 1
        now = time.monotonic()
        if now - self._unreadable_window >= _UNREADABLE_WINDOW_S:
            self._unreadable_window, self._unreadable_logged = now, 0
        if self._unreadable_logged < _UNREADABLE_LOGGED:
            self._unreadable_logged += 1
            log.warning(
                "skipping an unreadable record on %s partition %s offset %s (%d so far): %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                self.unreadable,
                exc,
            )

    def ends(self) -> dict[int, int] | None:
        """The followed partitions' ends now; None if the broker cannot say."""
        ends: dict[int, int] = {}
        try:
            for tp in self._consumer.assignment():
                found = self._consumer.get_watermark_offsets(tp, timeout=5)
                if found is None:  # timed out
                    raise KafkaException(f"no answer for partition {tp.partition} within 5s")
                ends[tp.partition] = found[1]
        except KafkaException as exc:
            log.warning("cannot read the ends of the results topic: %s", exc)
            return None
        return ends

    def reached(self, ends: dict[int, int] | None) -> bool:
        """Whether every outcome before ``ends`` has been read (False without ends)."""
        return ends is not None and not self._behind(ends, unpositioned=True)

    def _behind(self, ends: dict[int, int], *, unpositioned: bool) -> bool:
        """Whether a followed partition has outcomes before its end in ``ends`` still to
        read; ``unpositioned``: whether one with no position yet counts as behind."""
        for tp in self._consumer.assignment():
            end = ends.get(tp.partition)
            if end is None:
                continue
            at = self._resume_at(tp)
            if (at >= 0 or unpositioned) and at < end:
                return True
        return False

    def close(self) -> None:
        self._consumer.close()
