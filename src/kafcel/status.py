"""``kafcel status``: where the task topic stands for the bridge group, and the DLQ depth."""

from __future__ import annotations

from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from .admin import group_lag, topic_depth
from .bridge.presence import read_presence
from .errors import KafkaError
from .settings import Settings

__all__ = ["collect_status", "render_status"]


def collect_status(settings: Settings) -> dict[str, Any]:
    """Lag per partition, DLQ depth, live bridges and their counters. Raises KafkaError."""
    bootstrap, extra = settings.bootstrap_servers, settings.librdkafka()
    rows = group_lag(bootstrap, settings.group_id, settings.topic, extra=extra)
    if not rows:
        raise KafkaError(
            f"topic {settings.topic!r} does not exist on {settings.bootstrap_servers} "
            "(start a bridge, or check --topic / KAFCEL_TOPIC)"
        )
    bridges = _bridges(settings)
    return {
        "topic": settings.topic,
        "group": settings.group_id,
        "partitions": [r.as_dict() for r in rows],
        "lag": sum(r.lag for r in rows),
        "dlq": {
            "topic": settings.dlq_topic,
            "depth": topic_depth(bootstrap, settings.dlq_topic, extra=extra),
        },
        "bridges": bridges,
        "in_flight": sum(b.get("stats", {}).get("in_flight", 0) for b in bridges),
        "redispatched": sum(b.get("stats", {}).get("redispatched", 0) for b in bridges),
    }


def _bridges(settings: Settings) -> list[dict[str, Any]]:
    """Live bridges of the group, as they publish themselves to Redis (empty if unreachable)."""
    client: redis.Redis[bytes] = redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5
    )
    try:
        return read_presence(client, settings.group_id)
    except redis.RedisError:
        return []
    finally:
        client.close()


def render_status(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{report['topic']}  (group {report['group']})")
    for col in ("partition", "committed", "end", "lag"):
        table.add_column(col, justify="right")
    for row in report["partitions"]:
        committed = "-" if row["committed"] is None else str(row["committed"])
        lag = str(row["lag"])
        table.add_row(
            str(row["partition"]),
            committed,
            str(row["end"]),
            f"[red]{lag}[/]" if row["lag"] else lag,
        )
    table.add_section()
    table.add_row("total", "", "", str(report["lag"]))
    console.print(table)
    dlq = report["dlq"]
    style = "red" if dlq["depth"] else "green"
    console.print(f"DLQ [bold]{dlq['topic']}[/]: [{style}]{dlq['depth']}[/] record(s)")
    bridges = Table(title="bridges")
    for col in ("member", "partitions", "in flight", "dispatched", "redispatched", "dlq"):
        bridges.add_column(col, justify="left" if col == "member" else "right")
    for b in report.get("bridges", []):
        st = b.get("stats", {})
        bridges.add_row(
            str(b.get("member", "?")),
            ",".join(map(str, b.get("partitions", []))) or "-",
            str(st.get("in_flight", 0)),
            str(st.get("dispatched", 0)),
            str(st.get("redispatched", 0)),
            str(st.get("dlq", 0)),
        )
    if report.get("bridges"):
        console.print(bridges)
    else:
        console.print("[yellow]no live bridge of this group reported to Redis[/]")
