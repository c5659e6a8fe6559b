"""Scheduled tasks wait in a topic of their own, not in the bridge.

A task due later than ``schedule_after_s`` would otherwise hold its partition's commit,
count against ``max_in_flight`` and keep its bytes in the bridge until it runs: 10,000
tasks due tomorrow would pause the bridge until tomorrow. Instead the bridge *parks* the
record: it writes it, unchanged, to the scheduled topic (the same partition number and
key, its own headers plus ``kafcel.parked.*`` naming its task id, due time and origin),
and settles the original once Kafka has the copy.

The bridge owning task partition ``p`` follows scheduled partition ``p``. It reads it to
the end and keeps an index entry per parked task (due time and offset, never the
payload); when a task is due within ``schedule_after_s / 2`` it reads that one record
again and dispatches it like any other, with its eta, so Celery's own ETA timer starts
it on time. A parked record settles when its task does; the scheduled partition's commit
waits for the earliest unsettled parked task and holds no other record back. A bridge
that restarts reads the partition again from that commit and rebuilds the index.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from ..admin import fetch_config
from ..replay import header_list
from .sequence import SequenceGuard, position, seek_to

__all__ = ["Parked", "ParkedIndex", "Parker", "ScheduledReader"]

log = logging.getLogger("kafcel.bridge")

_PREFIX = "kafcel.parked."
_TASK_ID = _PREFIX + "task_id"
_ORIGIN = _PREFIX + "origin"
_ETA_MS = _PREFIX + "eta_ms"
_EXPIRES_MS = _PREFIX + "expires_ms"
_RETRY_AFTER_S = 1.0
_FETCH_TIMEOUT_S = 10.0
# Due offsets closer than this are read as one run rather than seeking to each.
_RUN_GAP = 64


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, kw_only=True)
class Parked:
    """What a parked record carries besides the original: enough to dispatch it as the
    task it was, with the same id, due time and expiry, answering for its origin."""

    task_id: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    eta: datetime
    expires: datetime | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        origin = f"{self.partition}/{self.offset}/{self.timestamp_ms or -1}/{self.topic}"
        out = [
            (_TASK_ID, self.task_id.encode()),
            (_ORIGIN, origin.encode()),
            (_ETA_MS, str(_ms(self.eta)).encode()),
        ]
        if self.expires is not None:
            out.append((_EXPIRES_MS, str(_ms(self.expires)).encode()))
        return out

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, Any]] | None) -> Parked | None:
        """The parked task of a scheduled record; None if it is not one."""
        found = {
            name: (value.decode() if isinstance(value, bytes) else str(value))
            for name, value in headers or ()
            if name.startswith(_PREFIX) and value is not None
        }
        try:
            partition, offset, stamp, topic = found[_ORIGIN].split("/", 3)
            expires = found.get(_EXPIRES_MS)
            return cls(
                task_id=found[_TASK_ID],
                topic=topic,
                partition=int(partition),
                offset=int(offset),
                timestamp_ms=int(stamp) if int(stamp) >= 0 else None,
                eta=_at(int(found[_ETA_MS])),
                expires=None if expires is None else _at(int(expires)),
            )
        except (KeyError, ValueError, UnicodeDecodeError, OverflowError, OSError):
            return None


class ParkedIndex:
    """Parked tasks by due time: (due ms, partition, offset), no payload."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, partition: int, offset: int, due_ms: int) -> None:
        heapq.heappush(self._heap, (due_ms, partition, offset))

    def due(self, until_ms: int) -> list[tuple[int, int]]:
        """(partition, offset) of every task due at or before ``until_ms``, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= until_ms:
            _, partition, offset = heapq.heappop(self._heap)
            out.append((partition, offset))
        return out

    def drop(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self._heap = [entry for entry in self._heap if entry[1] not in gone]
        heapq.heapify(self._heap)


class ScheduledReader:
    """Follows scheduled partitions: indexes what is parked, fetches what falls due."""

    def __init__(
        self,
        *,
        config: dict[str, Any],
        group_id: str,
        topic: str,
        lead_s: float,
        gap_wait_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self._lead_ms = int(lead_s * 1000)
        self._clock = clock
        self._index = ParkedIndex()
        conf = {
            **fetch_config(50),
            **config,
            "group.id": f"{group_id}.scheduled.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        self._tail = Consumer(conf)
        self._fetch = Consumer(conf)
        self._seq = SequenceGuard(
            seek=lambda tp, off: seek_to(self._tail, tp, off), gap_wait_s=gap_wait_s
        )

    def __len__(self) -> int:
        return len(self._index)

    def follow(self, starts: dict[int, int]) -> None:
        """Read these partitions from these offsets (their task partitions were assigned)."""
        if not starts:
            return
        parts = [TopicPartition(self.topic, p, max(off, 0)) for p, off in sorted(starts.items())]
        self._tail.incremental_assign(parts)
        for part in parts:
            self._seq.expect((self.topic, part.partition), part.offset)

    def unfollow(self, partitions: Iterable[int]) -> None:
        owned = {tp.partition for tp in self._tail.assignment()}
        gone = sorted(set(partitions) & owned)
        if not gone:
            return
        self._tail.incremental_unassign([TopicPartition(self.topic, p) for p in gone])
        for p in gone:
            self._seq.forget((self.topic, p))
        self._index.drop(gone)

    def read(self) -> list[Message]:
        """Parked records newly read, now in the index; records that are not parked
        tasks are returned too (the bridge dead-letters them)."""
        seen: list[Message] = []
        while True:
            msgs = self._tail.consume(500, timeout=0)
            if not msgs:
                return seen
            for msg in msgs:
                if msg.error() is not None or not self._seq.admit(*position(msg)):
                    continue
                parked = Parked.from_headers(header_list(msg))
                due_ms = 0 if parked is None else _ms(parked.eta)
                self._index.add(msg.partition() or 0, msg.offset() or 0, due_ms)
                seen.append(msg)

    def due(self) -> list[Message]:
        """The parked records due within the lead, read again from Kafka, earliest first."""
        wanted = self._index.due(int(self._clock() * 1000) + self._lead_ms)
        if not wanted:
            return []
        by_partition: dict[int, list[int]] = {}
        for partition, offset in wanted:
            by_partition.setdefault(partition, []).append(offset)
        found: dict[tuple[int, int], Message] = {}
        for partition, offsets in by_partition.items():
            found.update(self._read_offsets(partition, sorted(offsets)))
        missing = [w for w in wanted if w not in found]
        if missing:
            # Retention took them (the scheduled topic must keep records longer than the
            # longest schedule: kafcel creates it with retention.ms=-1), or Kafka is away:
            # index them again and try once more later.
            log.warning("could not read %d parked record(s) again; retrying", len(missing))
            retry_ms = int(self._clock() * 1000) + 1000
            for partition, offset in missing:
                self._index.add(partition, offset, retry_ms)
        return [found[w] for w in wanted if w in found]

    def _read_offsets(self, partition: int, offsets: list[int]) -> dict[tuple[int, int], Message]:
        runs: list[list[int]] = []
        for offset in offsets:
            if runs and offset - runs[-1][-1] <= _RUN_GAP:
                runs[-1].append(offset)
            else:
                runs.append([offset])
        out: dict[tuple[int, int], Message] = {}
        try:
            for run in runs:
                want = set(run)
                self._fetch.assign([TopicPartition(self.topic, partition, run[0])])
                deadline = time.monotonic() + _FETCH_TIMEOUT_S
                while want and time.monotonic() < deadline:
                    for msg in self._fetch.consume(500, timeout=0.1):
                        offset = msg.offset() or 0
                        if msg.error() is None and offset in want:
                            want.discard(offset)
                            out[(partition, offset)] = msg
                        elif msg.error() is None and offset > run[-1]:
                            want.clear()  # past the run: what is missing is gone
        except KafkaException as exc:
            log.warning("reading parked records of %s[%d] failed: %s", self.topic, partition, exc)
        finally:
            self._fetch.unassign()
        return out

    def close(self) -> None:
        self._tail.close()
        self._fetch.close()


Written = Callable[[], None]


class Parker:
    """Writes parked copies; ``on_written`` runs once Kafka has one. A write that fails is
    tried again (never dropped: the original stays unsettled meanwhile)."""

    def __init__(self, *, producer: Producer, topic: str) -> None:
        self._producer = producer
        self.topic = topic
        self._retry: list[tuple[Message, Parked, Written]] = []
        self._retry_at = 0.0

    def park(self, msg: Message, parked: Parked, on_written: Written) -> bool:
        """Queue the parked copy of ``msg``; False if it can never be written (larger than
        the producer may send): the caller dispatches the task directly instead."""
        original = [(n, v) for n, v in header_list(msg) if not n.startswith(_PREFIX)]

        def delivered(err: Any, _: Any) -> None:
            if err is None:
                on_written()
                return
            log.warning("parking a scheduled task failed (%s); retrying", err)
            self._retry.append((msg, parked, on_written))
            self._retry_at = time.monotonic() + _RETRY_AFTER_S

        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=msg.value(),
                    key=msg.key(),
                    partition=parked.partition,
                    headers=[*original, *parked.headers()],
                    on_delivery=delivered,
                )
                return True
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                if "MSG_SIZE_TOO_LARGE" in str(exc):
                    return False
                log.warning("parking a scheduled task failed (%s); retrying", exc)
                self._retry.append((msg, parked, on_written))
                self._retry_at = time.monotonic() + _RETRY_AFTER_S
                return True

    def retry_due(self) -> None:
        if self._retry and time.monotonic() >= self._retry_at:
            retry, self._retry = self._retry, []
            for msg, parked, on_written in retry:
                if not self.park(msg, parked, on_written):
                    log.error("a parked copy became too large to write; it stays unsettled")
