"""Kafka administration used by the bridge, the CLI and the demo: topics and offsets.

End offsets need care on Tansu: its high watermark is the base offset of the last batch
plus one, so it can be low by up to one batch. :func:`end_offsets` reads that last batch
there to find the true end; on Apache Kafka the high watermark is the end, and nothing is
read (``broker.detect`` tells which).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ClusterMetadata,
    NewTopic,
)

from ..errors import ConfigError, KafkaError
from .broker import detect
from .config import client_config, explain

__all__ = [
    "PartitionLag",
    "committed_offsets",
    "end_offsets",
    "ensure_topics",
    "group_lag",
    "offset_bounds",
    "open_consumer",
    "partition_leaders",
    "partitions_of",
    "topic_depth",
    "topic_names",
    "under_replicated",
]

TP = tuple[str, int]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _admin(bootstrap_servers: str, extra: Mapping[str, str] | None = None) -> AdminClient:
    try:
        return AdminClient(client_config(bootstrap_servers, extra))
    except KafkaException as exc:
        raise KafkaError(f"invalid Kafka configuration: {exc}") from exc


def open_consumer(
    bootstrap_servers: str,
    group_id: str | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    more: Mapping[str, Any] | None = None,
) -> Consumer:
    """A consumer that commits nothing (``group_id`` None: a throwaway group), ``more``
    overriding its settings; raises KafkaError on a bad configuration."""
    try:
        return Consumer(
            {
                **client_config(bootstrap_servers, extra),
                "group.id": group_id or f"kafcel-admin-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                **(more or {}),
            }
        )
    except KafkaException as exc:
        raise KafkaError(f"invalid Kafka configuration: {exc}") from exc


def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    *,
    extra: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create the missing topics with the given partition counts; existing ones stay.
    Returns each topic's partition count as the broker now lists it."""
    for topic, n in topics.items():
        if not topic or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"topic {topic!r}: need a name and >= 1 partitions, got {n!r}")
    if not topics:
        return {}
    admin = _admin(bootstrap_servers, extra)
    missing = [
        name
        for name in topics
        if name not in _topic_partitions(admin, timeout_s, bootstrap_servers)
    ]
    if missing:
        # -1: the broker's default.replication.factor, so production clusters replicate.
        new = [NewTopic(n, num_partitions=topics[n], replication_factor=-1) for n in missing]
        for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
            try:
                future.result()
            except KafkaException as exc:
                # Another client may have created it in between; that is fine.
                if exc.args[0].code() != RdKafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaError(f"could not create topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    while True:
        known = _topic_partitions(admin, timeout_s, bootstrap_servers)
        if all(known.get(name) for name in topics):
            return {name: len(known[name]) for name in topics}
        if time.monotonic() >= deadline:
            absent = ", ".join(name for name in topics if not known.get(name))
            raise KafkaError(f"topics {absent} not visible after {timeout_s:g}s")
        time.sleep(0.1)


def _list_topics(admin: AdminClient, timeout_s: float, address: str = "") -> ClusterMetadata:
    """Metadata of every topic the broker lists (never a request naming a topic:
    brokers with auto-creation, Tansu among them, would create it)."""
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaError(explain(admin, address, "Kafka is not reachable", exc)) from exc


_ASK_S = 5.0


def _group_denied(
    bootstrap_servers: str, group_id: str, extra: Mapping[str, str] | None
) -> str | None:
    """Why Kafka refuses this client the group, if it does (a missing ACL)."""
    admin = _admin(bootstrap_servers, extra)
    try:
        future = admin.describe_consumer_groups([group_id], request_timeout=_ASK_S)[group_id]
        future.result()
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if getattr(error, "code", lambda: None)() == RdKafkaError.GROUP_AUTHORIZATION_FAILED:
            return f"Kafka at {bootstrap_servers} refused this client: {error.str()}"  # type: ignore[union-attr]
    return None


def _topic_partitions(
    admin: AdminClient, timeout_s: float, address: str = ""
) -> dict[str, list[int]]:
    metadata = _list_topics(admin, timeout_s, address)
    return {t: sorted(meta.partitions) for t, meta in metadata.topics.items() if not meta.error}


def partition_leaders(
    bootstrap_servers: str, topic: str, *, timeout_s: float = 10.0
) -> dict[int, int]:
    """Partition id -> the node id leading it (-1 while it has none), from metadata."""
    metadata = _list_topics(_admin(bootstrap_servers), timeout_s, bootstrap_servers)
    meta = metadata.topics.get(topic)
    if meta is None or meta.error:
        return {}
    return {p.id: p.leader for p in meta.partitions.values()}


def under_replicated(bootstrap_servers: str, *, timeout_s: float = 10.0) -> list[str]:
    """``topic/partition`` of every partition with a replica out of sync."""
    metadata = _list_topics(_admin(bootstrap_servers), timeout_s, bootstrap_servers)
    return [
        f"{t.topic}/{p.id}"
        for t in metadata.topics.values()
        for p in t.partitions.values()
        if set(p.isrs) != set(p.replicas)
    ]


def topic_names(
    bootstrap_servers: str, *, extra: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> set[str]:
    """The topics Kafka lists (those this client may describe, under ACLs)."""
    admin = _admin(bootstrap_servers, extra)
    return set(_topic_partitions(admin, timeout_s, bootstrap_servers))


def partitions_of(
    bootstrap_servers: str,
    topic: str,
    *,
    extra: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> list[int]:
    admin = _admin(bootstrap_servers, extra)
    return _topic_partitions(admin, timeout_s, bootstrap_servers).get(topic, [])


def end_offsets(
    bootstrap_servers: str,
    tps: Iterable[TP],
    *,
    extra: Mapping[str, str] | None = None,
    settle_s: float = 0.3,
) -> dict[TP, int]:
    """The offset after the last record of each partition: Kafka's high watermark (on
    Tansu, corrected by reading the last batch: the module note)."""
    return {tp: end for tp, (_, end) in _bounds(bootstrap_servers, tps, extra, settle_s).items()}


def _bounds(
    bootstrap_servers: str,
    tps: Iterable[TP],
    extra: Mapping[str, str] | None,
    settle_s: float = 0.3,
) -> dict[TP, tuple[int, int]]:
    """(low offset, true end offset) of each partition."""
    tps = list(tps)
    if not tps:
        return {}
    tansu = detect(bootstrap_servers, extra).needs_tansu_handling
    consumer = open_consumer(bootstrap_servers, None, extra, more={"fetch.wait.max.ms": 50})
    try:
        lows: dict[TP, int] = {}
        ends: dict[TP, int] = {}
        for t, p in tps:
            low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
            lows[(t, p)] = max(low, 0)
            ends[(t, p)] = max(high, 0)
        tail = [TopicPartition(t, p, ends[(t, p)] - 1) for t, p in tps if ends[(t, p)] > 0]
        if tail and tansu:
            consumer.assign(tail)
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < settle_s:
                msgs = consumer.consume(1000, timeout=settle_s / 3)
                for m in msgs:
                    topic, partition, offset = m.topic(), m.partition(), m.offset()
                    if m.error() is None and topic is not None and partition is not None:
                        tp = (topic, partition)
                        if offset is not None and offset + 1 > ends[tp]:
                            ends[tp] = offset + 1
                            quiet_since = time.monotonic()
        return {tp: (lows[tp], ends[tp]) for tp in tps}
    except KafkaException as exc:
        raise KafkaError(
            explain(consumer, bootstrap_servers, "could not read end offsets", exc)
        ) from exc
    finally:
        consumer.close()


def offset_bounds(
    bootstrap_servers: str, tps: Iterable[TP], *, extra: Mapping[str, str] | None = None
) -> dict[TP, tuple[int, int]]:
    """(first offset, offset after the last record) of each partition."""
    return _bounds(bootstrap_servers, tps, extra)


def committed_offsets(
    bootstrap_servers: str,
    group_id: str,
    tps: Iterable[TP],
    *,
    extra: Mapping[str, str] | None = None,
) -> dict[TP, int | None]:
    consumer = open_consumer(bootstrap_servers, group_id, extra)
    try:
        got = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
    except KafkaException as exc:
        what = f"could not read committed offsets of {group_id!r}"
        # A consumer denied its group only times out; the admin API names the denial.
        denied = _group_denied(bootstrap_servers, group_id, extra)
        if denied is not None:
            raise KafkaError(f"{what}: {denied}") from exc
        raise KafkaError(explain(consumer, bootstrap_servers, what, exc)) from exc
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in got}


def group_lag(
    bootstrap_servers: str,
    group_id: str,
    topic: str,
    *,
    extra: Mapping[str, str] | None = None,
) -> list[PartitionLag]:
    """Per partition of ``topic``: the group's committed offset, the end offset, the lag."""
    tps = [(topic, p) for p in partitions_of(bootstrap_servers, topic, extra=extra)]
    if not tps:
        return []
    ends = end_offsets(bootstrap_servers, tps, extra=extra)
    committed = committed_offsets(bootstrap_servers, group_id, tps, extra=extra)
    rows = []
    for tp in tps:
        c = committed.get(tp)
        end = ends.get(tp, 0)
        rows.append(PartitionLag(tp[0], tp[1], c, end, max(end - (c or 0), 0)))
    return rows


def topic_depth(
    bootstrap_servers: str, topic: str, *, extra: Mapping[str, str] | None = None
) -> int:
    """How many records a topic holds (end minus low offset, summed over partitions)."""
    tps = [(topic, p) for p in partitions_of(bootstrap_servers, topic, extra=extra)]
    bounds = _bounds(bootstrap_servers, tps, extra)
    return sum(max(end - low, 0) for low, end in bounds.values())
