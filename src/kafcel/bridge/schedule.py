"""Scheduled tasks wait in a topic of their own, not in the bridge.

A task due later than ``schedule_after_s`` would otherwise hold its partition's commit,
count against ``max_in_flight`` and keep its bytes in the bridge until it runs: 10,000
tasks due tomorrow would pause the bridge until tomorrow. Instead the bridge *parks* the
record: it writes it, unchanged, to the scheduled topic (the same partition number and
key, its own headers plus ``kafcel.parked.*`` naming its task id, due time and origin),
and settles the original once Kafka has the copy.

The bridge owning task partition ``p`` follows scheduled partition ``p`` (parking.py). It
reads it to the end and keeps an index entry per parked task (due time, offset and when it
was parked, never the payload); when a task is due within ``schedule_after_s / 2`` it
reads that one record again and dispatches it like any other, with its eta, so Celery's
own ETA timer starts it on time. A parked record settles when its task does; the
scheduled partition's commit waits for the earliest unsettled parked task, and a task
that has waited long is parked anew at the end so that commit never lags far (tasks run
past it are deduplicated by their done markers only while those live). A bridge that
restarts reads the partition again from that commit and rebuilds the index.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from ..kafka.config import fetch_config
from ..kafka.delivery import Write, Writes
from ..protocol.headers import header_list
from .sequence import SequenceGuard, follow, guard, position, unfollow

__all__ = ["Parked", "ParkedIndex", "Parker", "ScheduledReader"]

log = logging.getLogger("kafcel.bridge")

_PREFIX = "kafcel.parked."
_TASK_ID = _PREFIX + "task_id"
_ORIGIN = _PREFIX + "origin"
_ETA_MS = _PREFIX + "eta_ms"
_EXPIRES_MS = _PREFIX + "expires_ms"
# Reading due records again waits at most this long per loop turn; what is missing then
# is looked for again a few seconds later.
_FETCH_TIMEOUT_S = 2.0
_RETRY_MISSING_MS = 5000
_STALE_CHECK_EVERY_S = 10.0
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


# (partition, offset, due ms, parked at ms)
Entry = tuple[int, int, int, int]


class ParkedIndex:
    """Parked tasks waiting in followed partitions: by due time (a heap of due ms,
    partition, offset) and by age (offsets in log order with their park time), never
    their payload. An entry handed out leaves both."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int]] = []
        # (partition, offset) -> (due ms, parked at ms)
        self._live: dict[tuple[int, int], tuple[int, int]] = {}
        self._by_age: dict[int, deque[int]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, partition: int, offset: int, due_ms: int, parked_ms: int) -> None:
        heapq.heappush(self._heap, (due_ms, partition, offset))
        self._live[(partition, offset)] = (due_ms, parked_ms)
        self._by_age.setdefault(partition, deque()).append(offset)

    def due(self, until_ms: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries due at or before ``until_ms``, earliest first."""
        out: list[Entry] = []
        while self._heap and self._heap[0][0] <= until_ms and len(out) < limit:
            _, partition, offset = heapq.heappop(self._heap)
            times = self._live.pop((partition, offset), None)
            if times is not None:
                out.append((partition, offset, *times))
        return out

    def parked_before(self, before_ms: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries still waiting that were parked before ``before_ms``:
        the oldest of each partition, the ones holding its commit back."""
        out: list[Entry] = []
        for partition, offsets in self._by_age.items():
            while offsets and len(out) < limit:
                key = (partition, offsets[0])
                times = self._live.get(key)
                if times is None:
                    offsets.popleft()  # handed out already
                elif times[1] < before_ms:
                    offsets.popleft()
                    del self._live[key]  # its heap entry goes stale
                    out.append((*key, *times))
                else:
                    break
        return out

    def drop(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self._heap = [entry for entry in self._heap if entry[1] not in gone]
        heapq.heapify(self._heap)
        self._live = {k: v for k, v in self._live.items() if k[0] not in gone}
        for partition in gone:
            self._by_age.pop(partition, None)


class ScheduledReader:
    """Follows scheduled partitions: indexes what is parked, fetches what falls due, and
    what has waited long enough to be parked again."""

    def __init__(
        self,
        *,
        config: dict[str, Any],
        group_id: str,
        topic: str,
        lead_s: float,
        repark_after_s: float,
        gap_wait_s: float,
        tansu: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self._lead_ms = int(lead_s * 1000)
        self._repark_after_ms = int(repark_after_s * 1000)
        self._next_stale_check = 0.0
        self._clock = clock
        self._index = ParkedIndex()
        conf = {
            **fetch_config(50, tansu=tansu),
            **config,
            "group.id": f"{group_id}.scheduled.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        self._tail = Consumer(conf)
        self._fetch = Consumer(conf)
        self._seq = guard(lambda: self._tail, gap_wait_s=gap_wait_s, tansu=tansu)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def sequence(self) -> SequenceGuard:
        return self._seq

    def follow(self, starts: dict[int, int]) -> None:
        """Read these partitions from these offsets (their task partitions were assigned)."""
        follow(self._tail, self._seq, self.topic, {p: max(o, 0) for p, o in starts.items()})

    def unfollow(self, partitions: Iterable[int]) -> None:
        self._index.drop(unfollow(self._tail, self._seq, self.topic, partitions))

    def read(self) -> list[Message]:
        """Parked records newly read, now in the index; records that are not parked
        tasks are returned too (the bridge dead-letters them when they come due: now)."""
        seen: list[Message] = []
        self._seq.tick()
        while True:
            msgs = self._tail.consume(500, timeout=0)
            if not msgs:
                return seen
            for msg in msgs:
                if msg.error() is not None or not self._seq.admit(*position(msg)):
                    continue
                self._index_record(msg)
                seen.append(msg)

    def _index_record(self, msg: Message) -> None:
        parked = Parked.from_headers(header_list(msg))
        due_ms = 0 if parked is None else _ms(parked.eta)
        _, stamp = msg.timestamp()
        now_ms = int(self._clock() * 1000)
        parked_ms = stamp if 0 < stamp <= now_ms else now_ms
        self._index.add(msg.partition() or 0, msg.offset() or 0, due_ms, parked_ms)

    def again(self, msgs: Iterable[Message]) -> None:
        """Handed out but not taken (no room in flight): back in the index."""
        for msg in msgs:
            self._index_record(msg)

    def due(self, *, limit: int) -> list[Message]:
        """Up to ``limit`` parked records due within the lead, read again from Kafka,
        earliest first."""
        now_ms = int(self._clock() * 1000)
        return self._records(self._index.due(now_ms + self._lead_ms, limit))

    def stale(self, *, limit: int = 100) -> list[Message]:
        """Parked records that have waited ``repark_after_s``, read again: the bridge
        parks each anew and settles the old copy, so a partition's commit never lags a
        long wait behind (past it, tasks already run would run again once their done
        markers expire), and the topic never needs to keep a record for long."""
        now = self._clock()
        if now < self._next_stale_check:
            return []
        self._next_stale_check = now + _STALE_CHECK_EVERY_S
        before_ms = int(now * 1000) - self._repark_after_ms
        return self._records(self._index.parked_before(before_ms, limit))

    def _records(self, entries: list[Entry]) -> list[Message]:
        if not entries:
            return []
        wanted = [(partition, offset) for partition, offset, _, _ in entries]
        by_partition: dict[int, list[int]] = {}
        for partition, offset in wanted:
            by_partition.setdefault(partition, []).append(offset)
        deadline = time.monotonic() + _FETCH_TIMEOUT_S
        found: dict[tuple[int, int], Message] = {}
        for partition, offsets in by_partition.items():
            found.update(self._read_offsets(partition, sorted(offsets), deadline))
        missing = [w for w in wanted if w not in found]
        if missing:
            # Kafka is slow or away (or retention took them): look again in a while,
            # rather than hold the bridge's loop here.
            log.warning("could not read %d parked record(s) again; retrying", len(missing))
            retry_ms = int(self._clock() * 1000) + _RETRY_MISSING_MS
            for partition, offset, due_ms, parked_ms in entries:
                if (partition, offset) not in found:
                    self._index.add(partition, offset, max(due_ms, retry_ms), parked_ms)
        return [found[w] for w in wanted if w in found]

    def _read_offsets(
        self, partition: int, offsets: list[int], deadline: float
    ) -> dict[tuple[int, int], Message]:
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
                while want and time.monotonic() < deadline:
                    for msg in self._fetch.consume(500, timeout=0.1):
                        offset = msg.offset() or 0
                        if msg.error() is None and offset in want:
                            want.discard(offset)
                            out[(partition, offset)] = msg
                        elif msg.error() is None and offset > run[-1]:
                            want.clear()  # past the run: what is missing is gone
            self._fetch.unassign()
        except KafkaException as exc:
            log.warning("reading parked records of %s[%d] failed: %s", self.topic, partition, exc)
        return out

    def close(self) -> None:
        self._tail.close()
        self._fetch.close()


class Parker:
    """Writes parked copies to ``topic`` through ``writes``: ``written`` runs once Kafka
    has one, ``refused`` if it never will (larger than the producer or the topic takes:
    the bridge keeps the task in flight instead); other failures are tried again while
    ``wanted()``."""

    def __init__(self, *, writes: Writes, topic: str) -> None:
        self._writes = writes
        self.topic = topic

    def park(
        self,
        msg: Message,
        parked: Parked,
        *,
        written: Callable[[], None],
        refused: Callable[[], None],
        wanted: Callable[[], bool],
    ) -> None:
        original = [(n, v) for n, v in header_list(msg) if not n.startswith(_PREFIX)]
        self._writes.send(
            Write(
                topic=self.topic,
                value=msg.value(),
                key=msg.key(),
                headers=[*original, *parked.headers()],
                partition=parked.partition,
                written=written,
                too_large=refused,
                wanted=wanted,
            )
        )
