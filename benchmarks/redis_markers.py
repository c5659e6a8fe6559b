"""Redis memory of the once-guard per 100,000 finished tasks: whole markers, then compacted.

Workers store each finished task's whole outcome (``done:<outcome>``) so that a copy
delivered before the bridge commits can re-announce it; once the bridge has committed
past the record it compacts the marker to ``done:=<status>:<task>``. This writes N
markers as workers do, then compacts them as the bridge does, on a Redis of its own, and
reads Redis's own accounting (``used_memory``, ``DBSIZE``) at each step.
Run: ``.venv/bin/python -m benchmarks.redis_markers``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from typing import Any

import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kafcel.dev import DevStack, free_ports
from kafcel.guard.once import OnceGuard
from kafcel.protocol.outcome import SUCCESS, Outcome

_BATCH = 1000


def outcome(task_id: str, result_bytes: int) -> Outcome:
    """What a worker stores for an ordinary task (tests.app.record-like, with a trace)."""
    return Outcome(
        task_id=task_id,
        task="shop.process_order",
        status=SUCCESS,
        result={"order": 42, "note": "r" * result_bytes},
        origin_topic="celery-tasks",
        origin_partition=3,
        origin_offset=1_234_567,
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        trace_id="4bf92f3577b34da6",
        fence="3f2a9c1e7b04.12",
    )


def used(client: redis.Redis[bytes]) -> tuple[int, int]:
    info = client.info("memory")
    return int(info["used_memory"]), int(client.dbsize())


def measure(client: redis.Redis[bytes], n: int, result_bytes: int, progress: Progress) -> Any:
    client.flushall()
    guard = OnceGuard(client=client, lease_s=30, done_ttl_s=7 * 24 * 3600)
    empty, _ = used(client)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    task = progress.add_task(f"{n:,} markers, {result_bytes:,} B results", total=2 * n)
    for start in range(0, n, _BATCH):
        for task_id in ids[start : start + _BATCH]:
            guard.finish(outcome(task_id, result_bytes))
        progress.advance(task, _BATCH)
    whole, keys_whole = used(client)
    for start in range(0, n, _BATCH):
        guard.compact(ids[start : start + _BATCH])
        progress.advance(task, _BATCH)
    compact, keys_compact = used(client)
    return {
        "tasks": n,
        "result_bytes": result_bytes,
        "whole_keys": keys_whole,
        "whole_mb": round((whole - empty) / 1e6, 1),
        "compact_keys": keys_compact,
        "compact_mb": round((compact - empty) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json)
    kafka_port, redis_port = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="kafcel-markers-") as tmp:
        # A Redis of its own, started as the local stack starts one (and ready when up).
        stack = DevStack(
            kafka_port=kafka_port, redis_port=redis_port, state_dir=tmp, services=("redis",)
        )
        stack.up()
        try:
            client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
            with Progress(console=console, transient=True) as progress:
                rows = [measure(client, args.tasks, size, progress) for size in (16, 2000)]
        finally:
            stack.down()
    table = Table(title=f"once-guard markers in Redis per {args.tasks:,} finished tasks")
    for column in ("result", "keys", "whole MB", "compacted MB", "B/task after"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['result_bytes']:,} B",
            f"{row['compact_keys']:,}",
            f"{row['whole_mb']}",
            f"{row['compact_mb']}",
            f"{row['compact_mb'] * 1e6 / row['tasks']:.0f}",
        )
    console.print(table)
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
