"""Bridge presence: each bridge publishes its counters to Redis for ``kafcel status``.

A key per bridge, ``kafcel:bridge:<group>:<member>``, expires unless refreshed, so a
bridge that died disappears from the status within ``ttl_s``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from ..telemetry.health import Report, record_samples
from .dispatch import Dispatch
from .sequence import SequenceGuard
from .tracker import TP, OffsetTracker

__all__ = ["BridgeStats", "Presence", "eta_held", "log_report", "positions", "read_presence"]

log = logging.getLogger("kafcel.bridge")

_PREFIX = "kafcel:bridge:"


@dataclass
class BridgeStats:
    """A bridge's counters: logged, and published with its presence."""

    consumed: int = 0
    dispatched: int = 0
    settled: int = 0
    dlq: int = 0
    duplicates: int = 0
    redispatched: int = 0
    broker_round_trips: int = 0
    commits: int = 0
    in_flight: int = 0
    waiting: int = 0
    held: int = 0  # valid records Celery could not take (routing, broker): sent again
    parked: int = 0  # tasks due later written to the scheduled topic
    scheduled: int = 0  # parked tasks this bridge's partitions hold, waiting to be due
    gaps_reseeked: int = 0
    gaps: int = 0  # offset jumps taken as legitimate (transaction markers, compaction)
    # Seconds partitions were held back looking for offsets not visible yet (the Tansu
    # handling); it stays 0 on Apache Kafka.
    gap_wait_s: float = 0.0
    paused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_gaps(self, guards: Iterable[SequenceGuard]) -> None:
        """Sum the gap counters of the bridge's readers (tasks, outcomes, scheduled)."""
        guards = list(guards)
        self.gaps_reseeked = sum(g.reseeks for g in guards)
        self.gaps = sum(g.gaps_accepted for g in guards)
        self.gap_wait_s = round(sum(g.waited_s for g in guards), 3)


class Presence:
    def __init__(
        self, *, client: redis.Redis[bytes], group: str, role: str = "bridge", ttl_s: float = 15.0
    ) -> None:
        self._redis = client
        # "bridge", or "worker" for a Celery worker that consumes the task topic itself.
        self.role = role
        self._ttl_ms = int(ttl_s * 1000)
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._key = f"{_PREFIX}{group}:{self.member}"
        self._group = group
        self._started = time.time()
        self._warned = False

    def publish(
        self,
        stats: dict[str, Any],
        assignment: list[tuple[str, int]],
        samples: dict[TP, Report] | None = None,
    ) -> None:
        """Refresh this bridge's presence and record its commit report
        (telemetry/health.py), in one round trip."""
        record = {
            "member": self.member,
            "role": self.role,
            "started": self._started,
            "updated": time.time(),
            "partitions": sorted(p for _, p in assignment),
            # With lanes, partition numbers alone do not say whose a partition is.
            "assigned": sorted([t, p] for t, p in assignment),
            "stats": stats,
        }
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key, json.dumps(record), px=self._ttl_ms)
                record_samples(pipe, group=self._group, samples=samples or {})
                pipe.execute()
            self._warned = False
        except redis.RedisError as exc:
            # Visibility only: never let it disturb the bridge loop, warn once per outage.
            if not self._warned:
                log.warning("cannot publish bridge stats to Redis: %s", exc)
                self._warned = True

    def leave(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._redis.delete(self._key)


def positions(
    consumer: Consumer,
    tracker: OffsetTracker,
    assigned: dict[TP, int],
    *,
    paused: bool,
    eta_held: set[TP],
    held: dict[TP, str] | None = None,
) -> dict[TP, Report]:
    """The report of each owned partition, from this bridge's own view: its last
    acknowledged commit (or the one found at assignment) and the end offset of its last
    fetch (librdkafka's cached high watermark, no request). The end is None when unknown:
    nothing fetched yet, or the partitions are paused (the cached end is stale)."""
    out: dict[TP, Report] = {}
    for tp in assigned:
        committed = tracker.committed(tp)
        if committed is None:
            committed = assigned[tp] if assigned[tp] >= 0 else None
        end: int | None = None
        if not paused:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            except KafkaException:
                high = -1
            end = max(high, committed or 0) if high >= 0 else None
        out[tp] = Report(committed, end, eta_held=tp in eta_held, held=(held or {}).get(tp))
    return out


def eta_held(tracker: OffsetTracker, pending: Iterable[list[Dispatch]]) -> set[TP]:
    """Partitions whose oldest unsettled record is a task waiting for its eta."""
    heads = {
        tp: off for tp in tracker.partitions() if (off := tracker.lowest_unsettled(tp)) is not None
    }
    if not any(off is not None for off in heads.values()):
        return set()
    return {
        item.tp
        for items in pending
        for item in items
        if item.eta is not None and heads.get(item.tp) == item.offset and item.wait_s() > 0
    }


def log_report(stats: BridgeStats, tracker: OffsetTracker) -> None:
    oldest = {
        f"{t}[{p}]": off
        for t, p in tracker.partitions()
        if (off := tracker.lowest_unsettled((t, p))) is not None
    }
    log.info("stats %s; oldest unsettled %s", stats.as_dict(), oldest or "none")


def read_presence(client: redis.Redis[bytes], group: str) -> list[dict[str, Any]]:
    """The live bridges of ``group`` with their counters, oldest first."""
    records = []
    for key in client.scan_iter(match=f"{_PREFIX}{group}:*", count=100):
        raw = client.get(key)
        if raw is None:
            continue
        try:
            records.append(json.loads(raw))
        except ValueError:
            continue
    return sorted(records, key=lambda r: r.get("started", 0))
