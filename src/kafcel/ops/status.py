"""``kafcel status``: the whole path in one report.

Per partition: the group's committed offset, the end offset, the lag and its evaluation
over the sliding window (:mod:`kafcel.telemetry.health`) with the member that owns it;
the live bridges and consuming workers with their in-flight and redispatch counts; task
state counts from Celery's result backend; the DLQ depth by error class. ``--check``
turns it into a health check.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse, urlsplit

import redis
from rich.console import Console
from rich.table import Table

from ..bridge.presence import read_presence
from ..errors import ConfigError, KafkaError
from ..kafka.admin import group_lag, offset_bounds, partitions_of
from ..kafka.lanes import dlq_topics, lanes_of
from ..protocol.deadletter import parse_dlq_headers
from ..protocol.headers import header_list
from ..settings import Settings
from ..telemetry.health import (
    OK,
    STATUSES,
    Report,
    Sample,
    evaluate,
    read_samples,
    server_time_s,
    worst,
)
from .render import wide_console
from .replay import scan_topic

__all__ = [
    "TASK_META",
    "collect_status",
    "connect",
    "render_status",
    "result_backend_redis",
    "unhealthy",
]

# Task meta keys of Celery's Redis result backend, and how many status reads at most.
TASK_META = "celery-task-meta-"
_MAX_META = 100_000
# The DLQ's error classes are read from its newest records at most (the depth is exact).
_DLQ_TAIL = 10_000
_STYLE = {"OK": "green", "WARN": "yellow", "STALL": "red", "STOP": "bold red"}


def collect_status(settings: Settings) -> dict[str, Any]:
    """The report as one JSON-ready dict. Raises KafkaError if Kafka or a task topic is
    missing; Redis or the result backend being down only empties their parts.

    With lanes (``topics``): the partitions of every lane's task topic (each row names
    its topic), ``lanes`` with each lane's lag and worst status, ``dlq`` summed over the
    lanes' distinct DLQ topics and ``dlqs`` with each one's; ``topic`` is the lanes'
    topics, comma separated, as ``topics`` takes them."""
    lanes = lanes_of(settings)
    bootstrap, extra = settings.bootstrap_servers, settings.librdkafka()
    rows = {
        lane.topic: group_lag(bootstrap, settings.group_id, lane.topic, extra=extra)
        for lane in lanes
    }
    missing = [topic for topic, found in rows.items() if not found]
    if missing or not rows:
        raise KafkaError(_missing(settings, missing))
    client = connect(settings.redis_url)
    redis_error = None
    bridges: list[dict[str, Any]] = []
    samples: dict[tuple[str, int], list[Sample]] = {
        (r.topic, r.partition): [] for found in rows.values() for r in found
    }
    now_s = time.time()
    try:
        bridges = read_presence(client, settings.group_id)
        for topic, found in rows.items():
            by_partition = read_samples(
                client,
                group=settings.group_id,
                topic=topic,
                partitions=[r.partition for r in found],
                window_s=settings.lag_window_s,
            )
            samples.update({(topic, p): got for p, got in by_partition.items()})
        now_s = server_time_s(client)  # the clock the bridges' reports carry
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        # Not an outage to report around but a setting to fix: say which, not the secret.
        where = urlsplit(settings.redis_url)
        user = f"user {where.username!r}" if where.username else "the default user"
        address = f"{where.hostname}:{where.port}" if where.port else str(where.hostname)
        raise ConfigError(f"Redis at {address} refused {user} (KAFCEL_REDIS_URL): {exc}") from exc
    except redis.RedisError as exc:
        redis_error = f"Redis unreachable ({exc}): no bridge reports"
    finally:
        client.close()
    owners = _owners(bridges, list(rows))
    partitions = []
    for row in (r for found in rows.values() for r in found):
        current = Report(row.committed, row.end)
        verdict = evaluate(
            samples[(row.topic, row.partition)],
            current=current,
            now_s=now_s,
            window_s=settings.lag_window_s,
        )
        reason = verdict.reason
        if redis_error and verdict.status == "STOP":
            reason = f"{redis_error}; lag is {row.lag}"
        partitions.append(
            {
                **row.as_dict(),
                "status": verdict.status,
                "reason": reason,
                "owner": owners.get((row.topic, row.partition)),
            }
        )
    overall = worst([p["status"] for p in partitions])
    dlqs = [_dlq(settings, topic) for topic in dlq_topics(lanes)]
    report: dict[str, Any] = {
        "topic": ",".join(rows) if settings.topics else settings.topic,
        "group": settings.group_id,
        "at": now_s,
        "redis_error": redis_error,
        "evaluation": {
            "status": overall,
            "window_s": settings.lag_window_s,
            "counts": {s: sum(p["status"] == s for p in partitions) for s in STATUSES},
        },
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
        "dlq": dlqs[0] if not settings.topics else _dlq_total(dlqs),
        "bridges": bridges,
        "in_flight": sum(b.get("stats", {}).get("in_flight", 0) for b in bridges),
        "redispatched": sum(b.get("stats", {}).get("redispatched", 0) for b in bridges),
        "tasks": task_states(settings),
    }
    if settings.topics:
        report["lanes"] = [_lane(lane, partitions) for lane in lanes]
        report["dlqs"] = dlqs
    return report


def _missing(settings: Settings, topics: list[str]) -> str:
    # Kafka lists no topic its client may not describe: a missing ACL looks the same.
    user = settings.sasl_username
    acl = f", or Kafka user {user!r} may not describe it (an ACL)" if user else ""
    where = settings.bootstrap_servers
    if not settings.topics:
        return (
            f"topic {settings.topic!r} does not exist on {where} "
            f"(start a bridge, or check --topic / KAFCEL_TOPIC{acl})"
        )
    if not topics:
        return f"no topic on {where} matches topics {','.join(settings.topics)}{acl}"
    named = ", ".join(repr(t) for t in topics)
    return (
        f"lane topic(s) {named} do not exist on {where} "
        f"(start a bridge, or check --topics / KAFCEL_TOPICS{acl})"
    )


def _owners(bridges: list[dict[str, Any]], topics: list[str]) -> dict[tuple[str, int], str]:
    """Who owns each partition, by (topic, partition), from each presence record's
    ``assigned`` ([[topic, partition], ...]); a record of a bridge older than lanes lists
    partition numbers only, which name the owner only when there is one topic."""
    owners: dict[tuple[str, int], str] = {}
    for b in bridges:
        member = str(b.get("member", "?"))
        assigned = b.get("assigned")
        if isinstance(assigned, list):
            owners.update({(str(t), int(p)): member for t, p in assigned})
        elif len(topics) == 1:
            owners.update({(topics[0], int(p)): member for p in b.get("partitions", [])})
    return owners


def _lane(lane: Settings, partitions: list[dict[str, Any]]) -> dict[str, Any]:
    own = [p for p in partitions if p["topic"] == lane.topic]
    return {
        "topic": lane.topic,
        "queue": lane.queue or None,
        "results_topic": lane.results_topic,
        "dlq_topic": lane.dlq_topic,
        "partitions": len(own),
        "lag": sum(p["lag"] for p in own),
        "status": worst([p["status"] for p in own]),
    }


def _dlq_total(dlqs: list[dict[str, Any]]) -> dict[str, Any]:
    """The lanes' DLQ topics as one: depths and classes summed."""
    by_class: Counter[str] = Counter()
    for d in dlqs:
        by_class.update(d["by_class"])
    read = [
        d["depth"] if d["classes_from_newest"] is None else d["classes_from_newest"] for d in dlqs
    ]
    partial = any(d["classes_from_newest"] is not None for d in dlqs)
    return {
        "topic": ",".join(d["topic"] for d in dlqs),
        "depth": sum(d["depth"] for d in dlqs),
        "by_class": dict(by_class.most_common()),
        # Classes read from the newest records only in some topic: how many were read.
        "classes_from_newest": sum(read) if partial else None,
    }


def unhealthy(report: dict[str, Any]) -> list[str]:
    """The partitions whose status is not OK, as ``--check`` names them: ``P:STATUS``, or
    ``TOPIC[P]:STATUS`` with lanes."""
    lanes = "lanes" in report
    return [
        f"{p['topic']}[{p['partition']}]:{p['status']}"
        if lanes
        else f"{p['partition']}:{p['status']}"
        for p in report["partitions"]
        if p["status"] != OK
    ]


def _dlq(settings: Settings, topic: str | None = None) -> dict[str, Any]:
    """Depth and error classes of the DLQ topic ``topic`` (default: ``dlq_topic``)."""
    topic = topic or settings.dlq_topic
    bootstrap, extra = settings.bootstrap_servers, settings.librdkafka()
    # One bounds read for the depth and the scan: each costs a tail read of the topic.
    parts = partitions_of(bootstrap, topic, extra=extra)
    bounds = offset_bounds(bootstrap, [(topic, p) for p in parts], extra=extra)
    depth = sum(max(end - low, 0) for low, end in bounds.values())
    by_class: Counter[str] = Counter()
    read = 0
    if depth:
        for msg in scan_topic(settings, topic, tail=_DLQ_TAIL, bounds=bounds):
            read += 1
            meta = parse_dlq_headers(header_list(msg))
            by_class[meta.get("error.class", "unknown")] += 1
    return {
        "topic": topic,
        "depth": depth,
        "by_class": dict(by_class.most_common()),
        "classes_from_newest": read if read < depth else None,
    }


def connect(url: str) -> redis.Redis[bytes]:
    """A Redis client for a command: it answers within 5 s or fails, never hangs."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def result_backend_redis(settings: Settings) -> redis.Redis[bytes] | None:
    """A client of Celery's result backend when it is Redis (the backends kafcel reads)."""
    url = settings.result_backend or settings.redis_url
    return connect(url) if urlparse(url).scheme in ("redis", "rediss", "unix") else None


def task_states(settings: Settings) -> dict[str, Any]:
    """Task state counts held by Celery's result backend (Redis backends are read).

    ``{"backend": url-without-password, "states": {"SUCCESS": n, ...}}``; ``sampled`` when
    more than 100,000 results are stored, ``error`` when the backend cannot be read.
    """
    url = settings.result_backend or settings.redis_url
    parsed = urlparse(url)
    shown = url
    if parsed.password:
        hidden = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        shown = parsed._replace(netloc=hidden).geturl()
    out: dict[str, Any] = {"backend": shown, "states": {}}
    client = result_backend_redis(settings)
    if client is None:
        out["error"] = f"{parsed.scheme} result backends are not read by kafcel status"
        return out
    states: Counter[str] = Counter()
    keys: list[bytes] = []
    try:
        for key in client.scan_iter(match=TASK_META + "*", count=1000):
            keys.append(key)
            if len(keys) >= _MAX_META:
                out["sampled"] = True
                break
        for start in range(0, len(keys), 1000):
            for raw in client.mget(keys[start : start + 1000]):
                if raw is None:
                    continue
                try:
                    states[str(json.loads(raw).get("status", "UNKNOWN"))] += 1
                except (ValueError, AttributeError):
                    states["UNKNOWN"] += 1
    except redis.RedisError as exc:
        out["error"] = f"result backend unavailable: {exc}"
    finally:
        client.close()
    out["states"] = dict(sorted(states.items()))
    return out


def render_status(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or wide_console()
    evaluation = report["evaluation"]
    status = evaluation["status"]
    lanes = report.get("lanes")
    table = Table(
        title=(
            f"{'lanes ' if lanes else ''}{report['topic']}  (group {report['group']})  "
            f"[{_STYLE[status]}]{status}[/] over {evaluation['window_s']:g}s"
        )
    )
    numeric = ("partition", "committed", "end", "lag")
    columns = ("topic",) * bool(lanes) + (*numeric, "status", "owner", "why")
    for col in columns:
        table.add_column(col, justify="right" if col in numeric else "left")
    for lane in lanes or [None]:
        for row in report["partitions"]:
            if lane is None or row["topic"] == lane["topic"]:
                table.add_row(*_partition_row(row, with_topic=lane is not None))
        if lane is not None:
            # Each lane's own total and worst status, below its partitions.
            name, lag = f"[bold]{lane['topic']}[/]", str(lane["lag"])
            table.add_row(
                name, "lane", "", "", lag, f"[{_STYLE[lane['status']]}]{lane['status']}[/]"
            )
            table.add_section()
    if not lanes:
        table.add_section()
    lead = ["total", ""] if lanes else ["total"]
    table.add_row(*lead, "", "", str(report["lag"]))
    console.print(table)
    _render_consumers(report, console)
    tasks = report["tasks"]
    states = ", ".join(f"{k} {v}" for k, v in tasks["states"].items()) or "none"
    note = f" [yellow]({tasks['error']})[/]" if "error" in tasks else ""
    console.print(f"tasks in the result backend: {states}{note}")
    for dlq in report.get("dlqs") or [report["dlq"]]:
        style = "red" if dlq["depth"] else "green"
        classes = ", ".join(f"{k} {v}" for k, v in dlq["by_class"].items())
        console.print(
            f"DLQ [bold]{dlq['topic']}[/]: [{style}]{dlq['depth']}[/] record(s)"
            + (f": {classes}" if classes else "")
        )


def _partition_row(row: dict[str, Any], *, with_topic: bool) -> list[str]:
    committed = "-" if row["committed"] is None else str(row["committed"])
    lag = str(row["lag"])
    return [
        *([row["topic"]] if with_topic else []),
        str(row["partition"]),
        committed,
        str(row["end"]),
        f"[red]{lag}[/]" if row["lag"] else lag,
        f"[{_STYLE[row['status']]}]{row['status']}[/]",
        str(row.get("owner") or "-"),
        row["reason"] if row["status"] != OK else "",
    ]


def _render_consumers(report: dict[str, Any], console: Console) -> None:
    # Bridges and Celery workers consuming the topic themselves (path B), one group.
    bridges = Table(title="consumers: bridges and consuming workers")
    for col in ("member", "role", "partitions", "in flight", "dispatched", "redispatched", "dlq"):
        bridges.add_column(col, justify="left" if col in ("member", "role") else "right")
    for b in report.get("bridges", []):
        st = b.get("stats", {})
        assigned = b.get("assigned")
        owned = (
            [f"{t}[{p}]" for t, p in assigned]
            if isinstance(assigned, list)
            else list(map(str, b.get("partitions", [])))
        )
        bridges.add_row(
            str(b.get("member", "?")),
            str(b.get("role", "bridge")),
            ",".join(owned) or "-",
            str(st.get("in_flight", 0)),
            str(st.get("dispatched", 0)),
            str(st.get("redispatched", 0)),
            str(st.get("dlq", 0)),
        )
    if report.get("bridges"):
        console.print(bridges)
    elif report.get("redis_error"):
        console.print(f"[red]{report['redis_error']}[/]")
    else:
        console.print("[yellow]no live bridge of this group reported to Redis[/]")
    console.print(
        f"in flight [bold]{report['in_flight']}[/], redispatched [bold]{report['redispatched']}[/]"
    )
