"""Lanes (issue 15, point 5): does a backlog on the bulk topic delay the urgent one?

One bridge reads two lanes, ``…-urgent`` and ``…-bulk``, each with its own consumer, its
half of ``max_in_flight`` and its own Celery queue (``lane_queues``); W worker processes
(as in the other rows) take both queues, the urgent one first. The urgent lane's
submit-to-start percentiles are measured at a modest steady rate twice on the same
bridge and workers: idle, then while a backlog written to the bulk topic just before
(100,000 records in the full run) drains through them. The bulk records still not run
when the last urgent measurement ends are reported: none left means the backlog was
over before the measurement was, and the figure is void (flagged, not hidden).

Why equal weights: the urgent lane has its own consumer, so the bulk backlog can fill
only the bulk lane's share of records in flight whatever the weights; the urgent lane
needs no more than rate x latency records (a handful), far below any share of 10,000.

Alone, at a small scale:

    .venv/bin/python -m benchmarks.lanes [--quick] [--scale F] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from kafcel import Producer
from kafcel.settings import Settings

from . import measure
from .report import lane_ratios, lane_rows
from .rig import PARTITIONS, BenchRig, wait_for
from .tasks import counter_key

if TYPE_CHECKING:
    from .bench import Runner

__all__ = ["LANES_APP", "RATE", "LaneSizes", "lanes", "main"]

LANES_APP = "benchmarks.lanes_app:app"
# Urgent tasks a second: a small fraction of what W=2 workers run end to end (hundreds a
# second), so the urgent lane alone never queues; what it waits for is the backlog.
RATE = 50.0
WEIGHTS = {"urgent": 1, "bulk": 1}
# Below this a tiny run's backlog is gone before its urgent tasks are: writing a few
# thousand records takes a fraction of a second, and nothing waits for them to drain.
_MIN_BACKLOG = 2_000
# Without lanes an urgent task would wait behind the bulk lane's share in Celery's queue:
# minutes, not the default two, before a stamped run counts as lost.
_WAIT_S = 900


@dataclass(frozen=True)
class LaneSizes:
    urgent: int  # urgent tasks a measurement, sent at RATE
    backlog: int  # bulk records written before the measurements with a backlog

    @classmethod
    def of(cls, *, quick: bool, scale: float) -> LaneSizes:
        urgent, backlog = (300, 20_000) if quick else (1_000, 100_000)
        return cls(
            urgent=max(int(urgent * scale), 20), backlog=max(int(backlog * scale), _MIN_BACKLOG)
        )


def lanes(r: Runner, rig: BenchRig, w: int, sizes: LaneSizes) -> dict[str, Any]:
    """The urgent lane's percentiles idle and under the bulk backlog, medians of
    ``r.repeat`` runs each; the backlog's drain rate and what was left of it."""
    run = measure._run()
    topics = {lane: f"bench-{run}-{lane}" for lane in WEIGHTS}
    queues = {lane: f"bench-lanes-{run}-{lane}" for lane in WEIGHTS}
    settings = Settings(
        bootstrap_servers=rig.stack.bootstrap_servers,
        redis_url=rig.stack.redis_url,
        topic=topics["urgent"],
        topics=tuple(f"{topics[lane]}:{weight}" for lane, weight in WEIGHTS.items()),
        lane_queues=tuple(f"{topics[lane]}={queues[lane]}" for lane in WEIGHTS),
        group_id=f"bench-{run}",
        partitions=PARTITIONS,
        # Stopping with the backlog still in flight: nothing waits for it.
        drain_timeout_s=1.0,
    )
    suffixes = ("", ".results", ".dlq", ".scheduled")
    rig.stack.devstack.ensure_topics({t + s: PARTITIONS for t in topics.values() for s in suffixes})
    # Each lane's companions are its own (TOPIC.results...): none is set here.
    env = {"KAFCEL_BENCH_QUEUE": queues["urgent"]}
    producers = {
        lane: Producer(settings=settings.replace(topic=topic, topics=(), lane_queues=()))
        for lane, topic in topics.items()
    }
    # -Q in that order: with the lanes app's queue_order_strategy "priority" each fetch
    # from Redis takes an urgent task first (benchmarks/lanes_app.py).
    worker = rig.worker(
        settings,
        f"{queues['urgent']},{queues['bulk']}",
        concurrency=w,
        app=LANES_APP,
        env=env,
    )
    bridge = rig.bridge(
        settings, queues["urgent"], app=LANES_APP, env=env, lanes=tuple(topics.values())
    )
    tally = rig.tally

    def urgent(t: measure.Tick, n: int = sizes.urgent) -> dict[str, float]:
        stamps = measure._run()
        producer = producers["urgent"]

        def send(i: int, slot: float) -> None:
            producer.submit("bench.stamp", args=[stamps, slot], key=f"user-{i % 1000}")

        return measure.stamped(
            rig, stamps, send, producer.flush, rate=RATE, n=n, tick=t, timeout_s=_WAIT_S
        )

    def bulk_done(run: str) -> int:
        return int(tally.get(counter_key(run)) or 0)

    try:
        # Untimed: each lane and worker process's first task (connections) is start-up.
        warm = measure._run()
        measure.submit_tasks(producers["bulk"], warm, 20, keys=None)
        urgent(measure._nothing, 20)
        wait_for(lambda: bulk_done(warm) >= 20, timeout_s=60, what="the bulk lane's first tasks")
        label = f"lanes: urgent at {RATE:.0f}/s"
        idle = [r.once(f"{label}, idle", sizes.urgent, urgent, i) for i in range(r.repeat)]
        backlog_run = measure._run()
        progress = r.progress
        task = progress.add_task(f"lanes: writing {sizes.backlog:,} bulk records", total=None)
        measure.submit_tasks(
            producers["bulk"],
            backlog_run,
            sizes.backlog,
            keys=None,
            tick=lambda done: progress.update(task, completed=done),
        )
        progress.update(task, total=sizes.backlog, completed=sizes.backlog)
        started, done_before = time.monotonic(), bulk_done(backlog_run)
        busy = [
            r.once(f"{label}, {sizes.backlog:,} bulk backlog", sizes.urgent, urgent, i)
            for i in range(r.repeat)
        ]
        elapsed, done = time.monotonic() - started, bulk_done(backlog_run)
    finally:
        rig.stop(bridge)
        rig.stop(worker)
        rig.broker.delete(*queues.values())
    left = sizes.backlog - done
    return {
        "rate": RATE,
        "n": sizes.urgent,
        "weights": WEIGHTS,
        "queues": "urgent,bulk (kombu queue_order_strategy priority)",
        "idle": _median(idle),
        "backlog": {
            **_median(busy),
            "records": sizes.backlog,
            "bulk_left": left,
            # Bulk tasks run per second while the urgent ones were measured.
            "drain_rate": (done - done_before) / max(elapsed, 1e-6),
            # Drained before the urgent measurements ended: they did not all face it.
            "void": left <= 0,
        },
    }


def _median(points: list[dict[str, float]]) -> dict[str, float]:
    """Each percentile's median over the runs (the rate and count are the runs' own)."""
    return {
        k: statistics.median(p[k] for p in points) if k.endswith("_ms") else v
        for k, v in points[0].items()
    }


def main(argv: list[str] | None = None) -> int:
    """This part alone, on a bench stack of its own."""
    from .bench import Runner, interrupt, progress_bar  # bench imports this module

    parser = argparse.ArgumentParser(prog="python -m benchmarks.lanes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every task count")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (W)")
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    console = Console(stderr=args.json)
    sizes = LaneSizes.of(quick=args.quick, scale=args.scale)
    rig = BenchRig(state_dir=Path(tempfile.mkdtemp(prefix="kafcel-bench-")), broker=args.broker)
    out: dict[str, Any] = {"sizes": asdict(sizes), "workers": args.workers}
    with progress_bar(console) as progress:
        progress.console.print(f"[dim]bench stack in {rig.state_dir}[/]")
        try:
            rig.up()
            out["broker"] = rig.broker_label
            out["lanes"] = lanes(Runner(progress, args.repeat), rig, args.workers, sizes)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]")
            return 130
        finally:
            rig.down()
    out["ratios"] = lane_ratios(out["lanes"])
    table = Table(title=f"lanes on {out['broker']}, W={args.workers}")
    for name in ("measure", "kafcel", "baseline", "ratio"):
        table.add_column(name)
    for row in lane_rows(out["lanes"]):
        table.add_row(*row)
    console.print(table)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
