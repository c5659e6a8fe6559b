"""Replays: a time range of the task topic, or records out of the DLQ, submitted again.

A replay is a new record on the task topic, so it goes through the bridge like any
other: validation, per-key order, the once-guard, the DLQ. Its headers
(:mod:`kafcel.protocol.headers`) say where it came from (``kafcel-replay-of``), when
(``kafcel-replay-at``), under which id it ran before (``kafcel-replay-original-id``) and
how often it has been replayed (``kafcel-replay-count``); if it fails again, its DLQ
record carries that count.

Times: ISO 8601 (a time without a zone is local time), ``now``, or a relative ``-90s``,
``-15m``, ``-2h``, ``-1d``. A time range is found by the broker's time index
(``offsets_for_times``): it runs from the first record stamped at or after its start to
the first stamped after its end, as Kafka's own tools seek by time, and nothing outside
it is read; each record read is checked against its own timestamp too, which costs no
read and keeps out an older stamp a producer whose clock runs behind put inside it.
Tansu answers that lookup with the first offset whatever the time (docs/design-notes.md),
so on a broker that needs the Tansu handling (:func:`kafcel.kafka.broker.detect`) the
lookup is a starting hint only and each record's own timestamp is checked: a full scan
there.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import Producer as KafkaProducer

from ..errors import ConfigError, DeliveryError, KafkaError, RecordRejected
from ..kafka.admin import offset_bounds, open_consumer, partitions_of
from ..kafka.broker import detect
from ..kafka.config import producer_config
from ..kafka.delivery import produce
from ..kafka.lanes import lanes_of
from ..protocol.envelope import Envelope, task_id_for
from ..protocol.headers import Headers, header_list, replay_count, replay_headers
from ..settings import Settings

__all__ = [
    "RangeReplay",
    "Republisher",
    "ScanStats",
    "parse_time",
    "read_one",
    "replay_lane",
    "replay_range",
    "scan_topic",
    "with_task_id",
]

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A scan that reads nothing for this long while records remain has lost the broker.
_STALL_S = 30.0

Progress = Callable[[int, int], None]


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time from the command line (see the module note); raises ConfigError."""
    now = now or datetime.now(UTC)
    raw = text.strip()
    if raw.lower() == "now":
        return now
    rel = _RELATIVE.match(raw.lower())
    if rel:
        return now - timedelta(seconds=float(rel.group(1)) * _UNITS_S[rel.group(2)])
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-24T10:00), now, or -15m/-2h/-1d"
        ) from exc
    return moment.astimezone() if moment.tzinfo is None else moment


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def with_task_id(value: bytes | None, task_id: str | None) -> bytes | None:
    """``value`` as an envelope under ``task_id`` (``None``: id left out, so a new one is
    derived from the new offset). An expiry already past is dropped: the operator asks
    for the task now. Bytes that are no valid envelope are replayed as they are: they
    go back to the DLQ unless the bridge has been fixed to accept them; a JSON object
    this version cannot read as an envelope (a newer writer's fields) still gets the id,
    its other fields kept as they are."""
    if value is None:
        return None
    try:
        envelope = Envelope.decode(value)
    except RecordRejected:
        return _with_id_as_json(value, task_id)
    expires = envelope.expires
    if isinstance(expires, datetime) and expires <= datetime.now(UTC):
        expires = None
    return dataclasses.replace(envelope, id=task_id, expires=expires).encode()


def _with_id_as_json(value: bytes, task_id: str | None) -> bytes:
    try:
        doc = json.loads(value)
    except ValueError:
        return value
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        return value
    if task_id is None:
        doc.pop("id", None)
    else:
        doc["id"] = task_id
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class ScanStats:
    """What a scan read: ``read`` counts the records it went through, in the time range
    or not (what a fetch brought past the scan's last offset is dropped unread)."""

    read: int = 0


def scan_topic(
    settings: Settings,
    topic: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tail: int | None = None,
    bounds: Mapping[tuple[str, int], tuple[int, int]] | None = None,
    on_progress: Progress | None = None,
    stats: ScanStats | None = None,
) -> Iterator[Message]:
    """Every record of ``topic`` stamped within [since, until], partition by partition in
    offset order, up to the end offsets seen when the scan starts (with ``tail``, only
    about the last ``tail`` records of the topic). ``bounds``: the (first, end) offsets
    of its partitions when the caller has read them already."""
    bootstrap, extra = settings.bootstrap_servers, settings.librdkafka()
    if bounds is None:
        listed = partitions_of(bootstrap, topic, extra=extra)
        bounds = offset_bounds(bootstrap, [(topic, p) for p in listed], extra=extra)
    parts = sorted(p for _, p in bounds)
    if not parts:
        raise KafkaError(f"topic {topic!r} does not exist on {bootstrap}")
    since_ms, until_ms = _ms(since), _ms(until)
    # The end of a partition can be a transaction marker, never delivered: the EOF event
    # says the scan has read all there is.
    consumer = open_consumer(
        bootstrap,
        extra=extra,
        more={
            "fetch.wait.max.ms": 50,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        },
    )
    try:
        starts = {p: bounds[(topic, p)][0] for p in parts}
        ends = {p: bounds[(topic, p)][1] for p in parts}
        if since_ms is not None or until_ms is not None:
            trusted = not detect(bootstrap, extra).needs_tansu_handling
            _by_time(consumer, topic, starts, ends, since_ms, until_ms, trusted=trusted)
        if tail is not None:
            each = max(tail // len(parts), 1)
            starts = {p: max(starts[p], ends[p] - each) for p in parts}
        left = {p for p in parts if starts[p] < ends[p]}
        total = sum(ends[p] - starts[p] for p in left)
        done = 0
        if on_progress:
            on_progress(0, total)
        if not left:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(left)])
        idle_since = time.monotonic()
        last_error = "no record arrived"

        def finished(partition: int) -> None:
            left.discard(partition)
            consumer.incremental_unassign([TopicPartition(topic, partition)])

        while left:
            msgs = consumer.consume(500, timeout=0.5)
            if time.monotonic() - idle_since > _STALL_S:
                raise KafkaError(f"reading {topic} stalled for {_STALL_S:.0f}s: {last_error}")
            for msg in msgs:
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                err = msg.error()
                if err is not None:
                    if err.code() == RdKafkaError._PARTITION_EOF:
                        if partition in left and offset >= ends[partition]:
                            finished(partition)  # the rest were markers or aborted
                    else:
                        last_error = str(err)
                    continue
                if partition not in left:
                    continue
                if offset >= ends[partition]:
                    finished(partition)  # past the end seen at the start: done
                    continue
                idle_since = time.monotonic()
                done += 1
                if stats is not None:
                    stats.read += 1
                if offset + 1 >= ends[partition]:
                    finished(partition)
                # Also within the sought offsets: a producer whose clock lags stamps a
                # record out of order, and the range is the records' own times.
                if not _stamped_within(msg, since_ms, until_ms):
                    continue
                yield msg
            if on_progress and msgs:
                on_progress(done, total)
    except KafkaException as exc:
        raise KafkaError(f"cannot read {topic}: {exc}") from exc
    finally:
        consumer.close()


def _by_time(
    consumer: Consumer,
    topic: str,
    starts: dict[int, int],
    ends: dict[int, int],
    since_ms: int | None,
    until_ms: int | None,
    *,
    trusted: bool,
) -> set[int]:
    """Narrow each partition's [start, end) to the time range by the broker's time index;
    return the partitions whose records must still be checked one by one: every one
    where the index is not ``trusted``, else those the broker had no answer for."""
    parts = sorted(starts)
    unsure = set() if trusted else set(parts)
    if since_ms is not None:
        for p, offset in _first_stamped(consumer, topic, parts, since_ms).items():
            if offset is None:
                unsure.add(p)  # read from the partition's start
            else:
                starts[p] = min(max(ends[p] if offset < 0 else offset, starts[p]), ends[p])
    if until_ms is not None and trusted:
        # The first record stamped after the range is where it ends.
        for p, offset in _first_stamped(consumer, topic, parts, until_ms + 1).items():
            if offset is None:
                unsure.add(p)
            elif offset >= 0:
                ends[p] = max(min(offset, ends[p]), starts[p])
    return unsure


def _first_stamped(
    consumer: Consumer, topic: str, parts: list[int], at_ms: int
) -> dict[int, int | None]:
    """Per partition, the first offset stamped at or after ``at_ms`` (-1: none is), or
    None where the broker could not say."""
    found = consumer.offsets_for_times([TopicPartition(topic, p, at_ms) for p in parts], timeout=10)
    return {tp.partition: None if tp.error is not None else tp.offset for tp in found}


def _stamped_within(msg: Message, since_ms: int | None, until_ms: int | None) -> bool:
    kind, stamp = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return True
    return (since_ms is None or stamp >= since_ms) and (until_ms is None or stamp <= until_ms)


def read_one(settings: Settings, topic: str, partition: int, offset: int) -> Message | None:
    """The record at ``partition:offset`` of ``topic``, or None if there is none."""
    bootstrap, extra = settings.bootstrap_servers, settings.librdkafka()
    if partition not in partitions_of(bootstrap, topic, extra=extra):
        return None
    low, end = offset_bounds(bootstrap, [(topic, partition)], extra=extra)[(topic, partition)]
    if not low <= offset < end:
        return None
    consumer = open_consumer(
        bootstrap, extra=extra, more={"enable.partition.eof": True, "fetch.wait.max.ms": 50}
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + _STALL_S
        while time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == RdKafkaError._PARTITION_EOF:
                        return None
                    continue
                got = int(msg.offset() or 0)
                if got == offset:
                    return msg
                if got > offset:
                    return None  # a compacted or aborted offset
        raise KafkaError(f"reading {topic}[{partition}]@{offset} timed out")
    except KafkaException as exc:
        raise KafkaError(f"cannot read {topic}: {exc}") from exc
    finally:
        consumer.close()


class Republisher:
    """Writes replayed records to task topics (``settings.topic`` unless a record names
    its own) with the same durability as submit()."""

    def __init__(self, *, settings: Settings) -> None:
        conf = producer_config(settings.bootstrap_servers, settings.librdkafka())
        try:
            self._producer = KafkaProducer(conf)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer configuration: {exc}") from exc
        self.topic = settings.topic
        self._errors: list[str] = []
        # Tags of the records Kafka did not take: their replay marks are released.
        self.failed: list[str] = []
        self.sent = 0
        self._topics: set[str] = set()

    def send(
        self,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        tag: str = "",
        topic: str | None = None,
    ) -> None:
        def delivered(err: Any, _: Message) -> None:
            if err is not None:
                self._errors.append(str(err))
                self.failed.append(tag)

        topic = topic or self.topic
        try:
            produce(
                self._producer,
                topic,
                value=value,
                key=key,
                headers=headers,
                on_delivery=delivered,
            )
        except KafkaException as exc:
            raise DeliveryError(f"cannot write to {topic}: {exc}") from exc
        self.sent += 1
        self._topics.add(topic)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every replayed record is on Kafka; raise DeliveryError otherwise,
        after :attr:`failed` names every record that is not (purged ones included)."""
        if self._producer.flush(timeout_s):
            # Still queued: purge, so each gets its delivery report (failed) and none is
            # sent later behind the caller's back.
            self._producer.purge()
            self._producer.flush(5)
        if self._errors:
            raise DeliveryError(
                f"{len(self._errors)} of {self.sent} replayed record(s) not delivered to "
                f"{', '.join(sorted(self._topics))}: {self._errors[:3]}"
            )


def replay_lane(settings: Settings) -> Settings:
    """The settings of the task topic a range replay reads and writes: ``topic``, which
    must be one of the lanes when ``topics`` names them (ConfigError otherwise)."""
    if not settings.topics:
        return settings
    lanes = {lane.topic: lane for lane in lanes_of(settings)}
    if settings.topic not in lanes:
        raise ConfigError(
            f"topic {settings.topic!r} is not one of the lanes ({', '.join(lanes) or 'none'}): "
            "name the lane to replay with --topic (KAFCEL_TOPIC)"
        )
    return lanes[settings.topic]


@dataclass(kw_only=True)
class RangeReplay:
    """What ``kafcel replay`` found (and, unless a dry run, submitted again)."""

    since: str
    until: str | None
    scanned: int = 0
    # Every record taken from the topic, in the range or not: what the scan cost.
    read: int = 0
    per_task: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    dry_run: bool = True
    task_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "scanned": self.scanned,
            "read": self.read,
            "matched": sum(self.per_task.values()),
            "per_task": dict(sorted(self.per_task.items())),
            "skipped": dict(self.skipped),
            "submitted": self.submitted,
            "dry_run": self.dry_run,
        }


def replay_range(
    settings: Settings,
    *,
    since: datetime,
    until: datetime | None = None,
    task: str | None = None,
    key: str | None = None,
    new_id: bool = True,
    include_replays: bool = False,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> RangeReplay:
    """Submit again the task records of [since, until] that match ``task`` (a glob) and
    ``key``. With ``new_id`` every copy runs again; with the same id, ids that already
    finished are skipped by the once-guard (only what never completed runs). Copies
    written by earlier replays are left out unless ``include_replays``: a second replay
    of the same hour must not replay the first one's copies too. With lanes (``topics``)
    ``topic`` names the lane replayed (:func:`replay_lane`)."""
    if until is not None and until < since:
        raise ConfigError("the end of the range is before its start")
    settings = replay_lane(settings)
    report = RangeReplay(
        since=since.isoformat(),
        until=until.isoformat() if until else None,
        dry_run=dry_run,
    )
    out = None if dry_run else Republisher(settings=settings)
    want_key = key.encode("utf-8", "surrogateescape") if key is not None else None
    stats = ScanStats()
    for msg in scan_topic(
        settings, settings.topic, since=since, until=until, on_progress=on_progress, stats=stats
    ):
        report.scanned += 1
        if want_key is not None and msg.key() != want_key:
            continue
        try:
            envelope = Envelope.decode(msg.value(), max_bytes=settings.max_record_bytes)
        except RecordRejected:
            report.skipped["invalid record (it is in the DLQ)"] += 1
            continue
        if task is not None and not fnmatch.fnmatchcase(envelope.task, task):
            continue
        if not include_replays and replay_count(msg.headers()):
            report.skipped["copies written by an earlier replay"] += 1
            continue
        report.per_task[envelope.task] += 1
        if out is None:
            continue
        kind, stamp = msg.timestamp()
        partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
        original_id = task_id_for(
            envelope,
            settings.topic,
            partition,
            offset,
            stamp if kind != TIMESTAMP_NOT_AVAILABLE else None,
        )
        task_id = str(uuid.uuid4()) if new_id else original_id
        out.send(
            value=with_task_id(msg.value(), task_id),
            key=msg.key(),
            headers=replay_headers(
                header_list(msg),
                source=f"{settings.topic}:{partition}:{offset}",
                original_id=original_id,
            ),
        )
        report.task_ids.append(task_id)
    report.read = stats.read
    if out is not None:
        out.flush()
        report.submitted = out.sent
    return report
