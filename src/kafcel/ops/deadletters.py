"""The DLQ as an operator sees it: list and filter dead letters, show one, replay them.

A dead letter holds the original bytes (or the request rebuilt by the worker) and the
``kafcel.*`` headers that say why it failed (:mod:`kafcel.protocol.deadletter`). A replay
writes it back to the task topic it came from (:mod:`kafcel.ops.replay`): with the id it
failed under, so a client waiting on that ``AsyncResult`` gets its final state, or with a
new id. Which records were replayed is kept in Redis, so running the same replay twice
does not submit twice.

With lanes (``topics``) every distinct DLQ topic of the lanes is read: each lane's own
``TOPIC.dlq``, or the one ``dlq_topic`` they share. A record's ref is ``PARTITION:OFFSET``
when there is one DLQ topic, ``DLQ_TOPIC:PARTITION:OFFSET`` when there are several.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import heapq
import json
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from ..errors import BrokerError, ConfigError, KafkaError
from ..guard.once import OnceGuard
from ..kafka.admin import topic_names
from ..kafka.lanes import dlq_topics, lanes_of
from ..protocol.deadletter import DLQ_HEADER_PREFIX, KNOWN_FIELDS, parse_dlq_headers
from ..protocol.headers import header_list, replay_headers
from ..settings import Settings
from .replay import Republisher, ScanStats, parse_time, read_one, scan_topic, with_task_id
from .status import TASK_META, connect, result_backend_redis

__all__ = [
    "DeadLetterRecord",
    "DlqFilter",
    "DlqReplay",
    "find_by_ref",
    "find_dead_letter",
    "parse_ref",
    "read_dead_letters",
    "replay_dead_letters",
    "replay_target",
    "resolve_ref",
    "select_dead_letters",
]

_REPLAYED = "kafcel:dlq:replayed:"
# The kafcel.* headers this version writes (protocol.deadletter.DeadLetter, the DLQ writer).


@dataclass(frozen=True, kw_only=True)
class DlqFilter:
    """Which dead letters to take: ``task`` and ``error_class`` are globs, ``key`` exact,
    ``since``/``until`` bound the time the record reached the DLQ."""

    task: str | None = None
    error_class: str | None = None
    key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.until < self.since:
            raise ConfigError("the end of the time range is before its start")

    @classmethod
    def parse(
        cls,
        *,
        task: str | None = None,
        error_class: str | None = None,
        key: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> DlqFilter:
        """The filter as typed on the command line or in the dashboard (times as text)."""
        return cls(
            task=task,
            error_class=error_class,
            key=key,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
        )

    def matches(self, record: DeadLetterRecord) -> bool:
        if self.task is not None and not fnmatch.fnmatchcase(record.task or "", self.task):
            return False
        if self.error_class is not None and not fnmatch.fnmatchcase(
            record.error_class, self.error_class
        ):
            return False
        return self.key is None or record.key == self.key


@dataclass(frozen=True, kw_only=True)
class DeadLetterRecord:
    topic: str  # the DLQ topic it is in
    partition: int
    offset: int
    timestamp: datetime | None
    key: str | None
    key_bytes: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    meta: dict[str, str]
    replayed: dict[str, Any] | None = None
    # The ref names the DLQ topic: there are several, PARTITION:OFFSET alone is ambiguous.
    qualified: bool = False

    @classmethod
    def from_message(cls, msg: Message, *, qualified: bool = False) -> DeadLetterRecord:
        kind, stamp_ms = msg.timestamp()
        key = msg.key()
        headers = header_list(msg)
        return cls(
            topic=str(msg.topic()),
            qualified=qualified,
            partition=int(msg.partition() or 0),
            offset=int(msg.offset() or 0),
            timestamp=(
                datetime.fromtimestamp(stamp_ms / 1000, UTC)
                if kind != TIMESTAMP_NOT_AVAILABLE
                else None
            ),
            key=key.decode("utf-8", "replace") if key is not None else None,
            key_bytes=key,
            value=msg.value(),
            headers=headers,
            meta=parse_dlq_headers(headers),
        )

    @property
    def ref(self) -> str:
        """How the operator names it: see the module note."""
        return f"{self.topic}:{self.position}" if self.qualified else self.position

    @property
    def position(self) -> str:
        """``PARTITION:OFFSET`` in its DLQ topic (the field of its replay mark)."""
        return f"{self.partition}:{self.offset}"

    @property
    def origin_topic(self) -> str | None:
        return self.meta.get("origin.topic")

    @functools.cached_property
    def task(self) -> str | None:
        # Parsed from the value for a rejected record: once, though filters and output ask.
        return self.meta.get("task") or _task_in(self.value)

    @property
    def task_id(self) -> str | None:
        return self.meta.get("task_id")

    @property
    def error_class(self) -> str:
        return self.meta.get("error.class", "unknown")

    @property
    def attempts(self) -> int:
        return _int(self.meta.get("attempts"))

    @property
    def replays(self) -> int:
        return _int(self.meta.get("replays"))

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ref": self.ref,
            "dlq_topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "key": self.key,
            "task": self.task,
            "task_id": self.task_id,
            "error_class": self.error_class,
            "error_message": self.meta.get("error.message", ""),
            "stage": self.meta.get("stage"),
            "attempts": self.attempts,
            "replays": self.replays,
            "failed_at": self.meta.get("failed_at"),
            "origin": {
                "topic": self.meta.get("origin.topic"),
                "partition": _int(self.meta.get("origin.partition"), -1),
                "offset": _int(self.meta.get("origin.offset"), -1),
            },
            "replayed": self.replayed,
        }
        if full:
            out["field"] = self.meta.get("error.field")
            out["traceback"] = self.meta.get("traceback")
            out["value"] = _show_value(self.value)
            out["headers"] = {
                name: (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
                for name, value in self.headers
                if not name.startswith(DLQ_HEADER_PREFIX)
            }
            out["value_dropped_bytes"] = self.meta.get("value_dropped_bytes")
            # Diagnostics a newer writer added: shown as they came, never an error.
            out["extra"] = {k: v for k, v in self.meta.items() if k not in KNOWN_FIELDS}
        return out


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _task_in(value: bytes | None) -> str | None:
    """The task a rejected record named, if it is JSON at all (for filtering only)."""
    if not value or len(value) > 1_048_576:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    task = doc.get("task") if isinstance(doc, dict) else None
    return task if isinstance(task, str) else None


def _show_value(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def parse_ref(text: str) -> tuple[str | None, int, int]:
    """``[DLQ_TOPIC:]PARTITION:OFFSET`` as typed: (topic or None, partition, offset)."""
    # A topic name holds no ":" (letters, digits, ".", "_", "-"): the last two parts are
    # the position.
    head, _, off = text.strip().rpartition(":")
    topic, _, part = head.rpartition(":")
    if not part.isdigit() or not off.isdigit() or (":" in head and not topic):
        raise ConfigError(f"{text!r} is not [DLQ_TOPIC:]PARTITION:OFFSET (e.g. 3:120)")
    return topic or None, int(part), int(off)


def resolve_ref(text: str, topics: list[str]) -> tuple[str, int, int]:
    """``text`` as (DLQ topic, partition, offset) among the DLQ topics ``topics``;
    ConfigError when it names another topic, or none while there are several."""
    topic, partition, offset = parse_ref(text)
    choices = ", ".join(topics)
    if topic is None:
        if len(topics) == 1:
            return topics[0], partition, offset
        raise ConfigError(
            f"{text} is ambiguous: the lanes have {len(topics)} DLQ topics ({choices}); "
            f"name one, e.g. {topics[0]}:{text}"
        )
    if topic not in topics:
        raise ConfigError(f"{topic!r} is not a DLQ topic read here ({choices})")
    return topic, partition, offset


def _replayed(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    client = connect(settings.redis_url)
    try:
        raw = client.hgetall(_REPLAYED + topic)
    except redis.RedisError:
        return {}  # listing must work with Redis down; only replay needs it
    finally:
        client.close()
    out: dict[str, dict[str, Any]] = {}
    for ref, value in raw.items():
        try:
            out[ref.decode()] = json.loads(value)
        except ValueError:
            continue
    return out


def read_dead_letters(
    settings: Settings,
    flt: DlqFilter | None = None,
    *,
    limit: int | None = None,
    stats: ScanStats | None = None,
    lanes: list[Settings] | None = None,
) -> list[DeadLetterRecord]:
    """Dead letters of every DLQ topic of the lanes matching ``flt``, oldest first; with
    ``limit``, the newest ``limit``. ``stats`` counts what the scans read; ``lanes``:
    ``lanes_of(settings)`` when the caller has them already."""
    flt = flt or DlqFilter()
    topics = _existing(settings, dlq_topics(lanes_of(settings) if lanes is None else lanes))
    # With a limit only the newest ``limit`` are kept while scanning: a DLQ of millions
    # of records must not be held in memory to show fifty.
    found: list[tuple[Any, int, DeadLetterRecord]] = []
    n = 0
    for topic in topics:
        replayed = _replayed(settings, topic)
        for msg in scan_topic(settings, topic, since=flt.since, until=flt.until, stats=stats):
            n += 1
            record = DeadLetterRecord.from_message(msg, qualified=len(topics) > 1)
            if not flt.matches(record):
                continue
            mark = replayed.get(record.position)
            if mark is not None:
                record = _with_mark(record, mark)
            item = (_order(record), n, record)
            if limit is None:
                found.append(item)
            elif len(found) < limit:
                heapq.heappush(found, item)
            else:
                heapq.heappushpop(found, item)
    return [record for *_, record in sorted(found)]


def _existing(settings: Settings, topics: list[str]) -> list[str]:
    """``topics`` less those Kafka lacks: a lane whose bridge has not made its DLQ topic
    yet has no dead letters. One topic is kept as it is (its scan says it is missing)."""
    if len(topics) < 2:
        return topics
    listed = topic_names(settings.bootstrap_servers, extra=settings.librdkafka())
    kept = [topic for topic in topics if topic in listed]
    if not kept:
        raise KafkaError(
            f"none of the DLQ topics {', '.join(topics)} exists on {settings.bootstrap_servers}"
        )
    return kept


def _order(record: DeadLetterRecord) -> tuple[datetime, str, int, int]:
    stamp = record.timestamp or datetime.min.replace(tzinfo=UTC)
    return stamp, record.topic, record.partition, record.offset


def _with_mark(record: DeadLetterRecord, mark: dict[str, Any]) -> DeadLetterRecord:
    return dataclasses.replace(record, replayed=mark)


def find_dead_letter(
    settings: Settings,
    partition: int,
    offset: int,
    *,
    topic: str | None = None,
    qualified: bool = False,
) -> DeadLetterRecord:
    """One dead letter by its position in the DLQ topic ``topic`` (default: the
    settings' ``dlq_topic``); raises ConfigError if absent."""
    topic = topic or settings.dlq_topic
    msg = read_one(settings, topic, partition, offset)
    if msg is None:
        raise ConfigError(f"no record at {partition}:{offset} in {topic}")
    record = DeadLetterRecord.from_message(msg, qualified=qualified)
    mark = _replayed(settings, topic).get(record.position)
    return record if mark is None else _with_mark(record, mark)


def find_by_ref(
    settings: Settings, ref: str, *, lanes: list[Settings] | None = None
) -> DeadLetterRecord:
    """One dead letter by its ref among the DLQ topics of the lanes (see the module note)."""
    topics = dlq_topics(lanes_of(settings) if lanes is None else lanes)
    topic, partition, offset = resolve_ref(ref, topics)
    return find_dead_letter(settings, partition, offset, topic=topic, qualified=len(topics) > 1)


def select_dead_letters(
    settings: Settings,
    refs: Iterable[str],
    flt: DlqFilter | None = None,
    *,
    lanes: list[Settings] | None = None,
) -> list[DeadLetterRecord]:
    """The dead letters ``refs`` names among those ``flt`` matches (all of them without
    refs); ConfigError naming every ref that is not there."""
    lanes = lanes_of(settings) if lanes is None else lanes
    topics = dlq_topics(lanes)
    wanted = {resolve_ref(ref, topics): ref for ref in refs}
    records = [
        r
        for r in read_dead_letters(settings, flt, lanes=lanes)
        if not wanted or (r.topic, r.partition, r.offset) in wanted
    ]
    missing = set(wanted) - {(r.topic, r.partition, r.offset) for r in records}
    if missing:
        shown = ", ".join(wanted[place] for place in sorted(missing))
        raise ConfigError(f"not in {', '.join(topics)} (or filtered out): {shown}")
    return records


def replay_target(record: DeadLetterRecord, lanes: list[Settings]) -> str | None:
    """The task topic ``record`` goes back to: the lane it came from (``origin.topic``),
    else the one lane whose DLQ it is in; None when neither says."""
    origin = record.origin_topic
    if origin in {lane.topic for lane in lanes}:
        return origin
    # A letter without its origin (or from a topic since renamed) in a lane's own DLQ.
    owners = [lane.topic for lane in lanes if lane.dlq_topic == record.topic]
    return owners[0] if len(owners) == 1 else None


@dataclass
class DlqReplay:
    """What a DLQ replay did: the ids submitted, and what it left and why."""

    submitted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        reasons = Counter(s["reason"] for s in self.skipped)
        return {
            "submitted": self.submitted,
            "skipped": self.skipped,
            "counts": {"submitted": len(self.submitted), "skipped": dict(reasons)},
        }


def replay_dead_letters(
    settings: Settings,
    records: Iterable[DeadLetterRecord],
    *,
    new_id: bool = False,
    again: bool = False,
    dry_run: bool = False,
    lanes: list[Settings] | None = None,
) -> DlqReplay:
    """Write ``records`` back to the task topic each came from (:func:`replay_target`).

    Same id (the default): the once-guard's failure marker of that id and Celery's stored
    failure are forgotten so the task runs again under it; an id that meanwhile succeeded
    is left alone (``new_id`` runs it again on purpose), one in progress is left to run. A
    record without a task id (rejected by the bridge) is replayed byte for byte.

    Each record is claimed in Redis before it is sent (``HSETNX``), so two operators, or
    the CLI and the dashboard, never both send it; ``again`` replays records replayed
    before. A claim whose record Kafka did not take is released. A record whose value was
    too large for the DLQ (only its headers were kept) cannot be replayed.
    """
    lanes = lanes_of(settings) if lanes is None else lanes
    report = DlqReplay()
    client = connect(settings.redis_url)
    guard = OnceGuard(
        client=client, lease_s=settings.once_lease_s, done_ttl_s=settings.once_done_ttl_s
    )
    out: Republisher | None = None
    # What each sent record's claim is, by the tag its delivery report comes back with.
    claims: dict[str, tuple[str, str]] = {}
    try:
        for record in records:
            target = replay_target(record, lanes)
            skip = _why_not(record, again, target, lanes)
            marks, position = _REPLAYED + record.topic, record.position
            task_id = record.task_id
            if new_id:
                task_id = "(new)" if dry_run else str(uuid.uuid4())
            if skip is None and not dry_run:
                mark = json.dumps({"at": datetime.now(UTC).isoformat(), "task_id": task_id})
                previous = client.hget(marks, position) if again else None
                if again:
                    client.hset(marks, position, mark)
                elif not client.hsetnx(marks, position, mark):
                    skip = "replayed before (by someone else just now); --again replays it"
                if skip is None and not new_id and record.task_id:
                    skip = _forget(settings, guard, record.task_id)
                    if skip is not None:
                        _release(client, marks, position, previous)
            if skip is not None or target is None:
                report.skipped.append({"ref": record.ref, "reason": skip})
                continue
            entry = {"ref": record.ref, "task": record.task, "task_id": task_id, "topic": target}
            report.submitted.append(entry)
            if dry_run:
                continue
            out = out or Republisher(settings=settings)
            tag = f"{record.topic}:{position}"
            claims[tag] = (marks, position)
            out.send(
                value=with_task_id(record.value, task_id) if task_id else record.value,
                key=record.key_bytes,
                headers=replay_headers(
                    record.headers,
                    source=tag,
                    original_id=record.task_id,
                    drop_prefix=DLQ_HEADER_PREFIX,
                    replays=record.replays,
                ),
                tag=tag,
                topic=target,
            )
        if out is not None:
            try:
                out.flush()
            finally:
                for tag in out.failed:
                    _release(client, *claims[tag], None)
    except redis.RedisError as exc:
        raise BrokerError(f"Redis unavailable while replaying: {exc}") from exc
    finally:
        client.close()
    return report


def _forget(settings: Settings, guard: OnceGuard, task_id: str) -> str | None:
    """Clear ``task_id``'s failure so it can run again; the reason not to, if any."""
    state = guard.forget(task_id)
    if state == "succeeded":
        return "its id has succeeded since: --new-id runs it again on purpose"
    if state != "forgotten":
        return "its id is queued or running (an earlier replay?): wait for it"
    # Celery's stored FAILURE would be the first thing a waiting client (and the bridge,
    # settling a long-queued task from the result backend) reads: the replay's result
    # replaces it. Redis result backends only; others keep it until then.
    results = result_backend_redis(settings)
    if results is not None:
        try:
            results.delete(TASK_META + task_id)
        finally:
            results.close()
    return None


def _release(client: redis.Redis[bytes], marks: str, ref: str, previous: bytes | None) -> None:
    if previous is None:
        client.hdel(marks, ref)
    else:
        client.hset(marks, ref, previous)


def _why_not(
    record: DeadLetterRecord, again: bool, target: str | None, lanes: list[Settings]
) -> str | None:
    if target is None:
        lanes_named = ", ".join(lane.topic for lane in lanes)
        return f"its origin topic {record.origin_topic!r} is not one of the lanes ({lanes_named})"
    if record.replayed is not None and not again:
        return f"replayed before ({record.replayed.get('at')}); --again replays it once more"
    if record.value is None:
        dropped = record.meta.get("value_dropped_bytes")
        return f"its value was not kept (too large: {dropped} bytes)"
    return None
