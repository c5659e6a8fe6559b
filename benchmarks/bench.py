"""``make bench``: kafcel against plain Celery and Celery's Kafka transport, one run.

Every figure is the median of ``--repeat`` runs made here, on one machine, against the
bench's own broker (Apache Kafka; ``--broker tansu`` for Tansu) and Redis; the ratios
compare figures of this same run. ``--quick`` is a small run, ``--scale`` multiplies
every task count (the test suite's smoke run uses a tiny one), ``--json`` ends the
output with one JSON line holding everything, the broker's name and version included.
The lanes part (:mod:`benchmarks.lanes`) also runs alone: ``python -m benchmarks.lanes``.

    .venv/bin/python -m benchmarks.bench [--quick] [--json] [--repeat N] [--scale F]
        [--broker kafka|tansu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import measure
from .lanes import LaneSizes, lanes
from .report import cpu_table, draw, ratios_of, table, targets_of, write_docs
from .rig import BenchRig

# How the progress bar names each end-to-end system.
_LABELS = {"celery": "celery", "kafcel": "kafcel bridge", "kafcel_worker": "kafcel in-worker"}

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Sizes:
    send_task: int
    kombu: int
    submit: int
    dispatch: int
    e2e: int
    e2e_kombu: int
    latency_s: float
    backlog: int

    def scaled(self, factor: float) -> Sizes:
        def n(value: int) -> int:
            return max(int(value * factor), 20)

        return Sizes(
            send_task=n(self.send_task),
            kombu=n(self.kombu),
            submit=n(self.submit),
            dispatch=n(self.dispatch),
            e2e=n(self.e2e),
            e2e_kombu=n(self.e2e_kombu),
            latency_s=max(self.latency_s * factor, 1.0),
            backlog=n(self.backlog),
        )


FULL = Sizes(
    send_task=10_000,
    kombu=3_000,
    submit=200_000,
    dispatch=50_000,
    e2e=20_000,
    e2e_kombu=3_000,
    latency_s=10.0,
    backlog=1_000_000,
)
QUICK = Sizes(
    send_task=2_000,
    kombu=500,
    submit=20_000,
    dispatch=5_000,
    e2e=3_000,
    e2e_kombu=500,
    latency_s=4.0,
    backlog=20_000,
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (minutes)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every task count")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (W)")
    parser.add_argument("--backlog", type=int, help="records in the memory run's backlog")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        default="kafka",
        help="the bench's own broker: Apache Kafka (default, one KRaft node) or Tansu",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the bridge in one dispatch run, path B's workers in one end-to-end run",
    )
    parser.add_argument(
        "--docs", action="store_true", help="write the figures into docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.workers < 1 or not 0 < args.scale <= 100:
        parser.error("--repeat and --workers must be at least 1, --scale in (0, 100]")
    if args.backlog is not None and args.backlog < 1:
        parser.error("--backlog must be at least 1")
    return args


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


class Runner:
    """Runs each figure ``repeat`` times with a progress bar; keeps every run."""

    def __init__(self, progress: Progress, repeat: int) -> None:
        self.progress = progress
        self.repeat = repeat
        self.runs: dict[str, list[Any]] = {}

    def rate(self, name: str, total: int, fn: Callable[[measure.Tick], float]) -> float:
        values = [self.once(name, total, fn, i) for i in range(self.repeat)]
        return statistics.median(values)

    def once(self, name: str, total: int, fn: Callable[[measure.Tick], Any], index: int) -> Any:
        label = f"{name} [{index + 1}/{self.repeat}]"
        task = self.progress.add_task(label, total=total)
        value = fn(lambda done: self.progress.update(task, completed=done))
        self.progress.update(task, completed=total, description=f"{label} ✓")
        self.runs.setdefault(name, []).append(value)
        return value


def run(args: argparse.Namespace, console: Console, out: dict[str, Any]) -> None:
    """Measure everything into ``out`` (which keeps what was measured if a step fails)."""
    sizes = (QUICK if args.quick else FULL).scaled(args.scale)
    if args.backlog:
        sizes = Sizes(**{**sizes.__dict__, "backlog": args.backlog})
    w = args.workers
    lane_sizes = LaneSizes.of(quick=args.quick, scale=args.scale)
    out |= {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "make bench BENCH_ARGS=" + repr(" ".join(sys.argv[1:])),
        "sizes": {**sizes.__dict__, **{f"lanes_{k}": v for k, v in asdict(lane_sizes).items()}},
        "workers": w,
        "repeat": args.repeat,
    }
    state = Path(tempfile.mkdtemp(prefix="kafcel-bench-"))
    rig = BenchRig(state_dir=state, broker=args.broker)
    with progress_bar(console) as progress:
        r = Runner(progress, args.repeat)
        progress.console.print(f"[dim]bench stack in {state}[/]")
        rig.up()
        out["broker"] = rig.broker_label
        progress.console.print(f"broker: {rig.broker_label}")
        from .app import app

        try:
            # -- enqueue: one call per task, as an application submits -----------------
            enqueue = {
                "send_task": r.rate(
                    "enqueue: Celery send_task (Redis)",
                    sizes.send_task,
                    lambda t: measure.send_task_rate(app, rig, sizes.send_task, t),
                ),
                "kombu_kafka_send_task": r.rate(
                    "enqueue: Celery send_task (kombu confluentkafka)",
                    sizes.kombu,
                    lambda t: measure.kombu_send_rate(rig, sizes.kombu, t),
                ),
                "kafcel_submit": r.rate(
                    "enqueue: kafcel submit",
                    sizes.submit,
                    lambda t: measure.submit_rate(rig, sizes.submit, t),
                ),
                "raw_produce": r.rate(
                    "enqueue: raw confluent-kafka produce",
                    sizes.submit,
                    lambda t: measure.raw_produce_rate(rig, sizes.submit, t),
                ),
            }
            out["enqueue"] = enqueue
            # -- dispatch: Kafka to the Celery broker, no worker ------------------------
            # The last run's messages, pushed again by a bare pipelined LPUSH loop.
            dispatched: list[bytes] = []
            out["dispatch"] = {
                "kafcel_bridge": r.rate(
                    "dispatch: kafcel bridge, no worker",
                    sizes.dispatch,
                    lambda t: measure.dispatch_rate(rig, sizes.dispatch, tick=t, keep=dispatched),
                ),
                "raw_lpush": r.rate(
                    "dispatch: raw Redis LPUSH, pipelined",
                    sizes.dispatch,
                    lambda t: measure.raw_lpush_rate(rig, dispatched, t),
                ),
                "send_task": enqueue["send_task"],
            }
            del dispatched[:]
            if args.profile:
                path = args.out / "bridge-dispatch-profile.txt"
                # pyinstrument writes there when the bridge exits: --out may not exist yet.
                args.out.mkdir(parents=True, exist_ok=True)
                r.once(
                    "dispatch: profiled",
                    sizes.dispatch,
                    lambda t: measure.dispatch_rate(rig, sizes.dispatch, profile=path, tick=t),
                    0,
                )
                out["profile"] = str(path)
            # -- end to end, and latency on the same workers -----------------------------
            profile = args.out / "worker-e2e-profile" if args.profile else None
            e2e, lat = _end_to_end(r, rig, app, sizes, w, out, profile=profile)
            kombu = rig.kombu(f"bench-e2e-kombu-{measure._run()}", concurrency=w)
            kombu.start_worker()
            try:
                e2e["kombu_kafka"] = r.rate(
                    f"end to end: kombu-kafka, W={w}",
                    sizes.e2e_kombu,
                    lambda t: measure.e2e_rate(
                        rig, measure.kombu_sender(kombu), sizes.e2e_kombu, t
                    ),
                )
            finally:
                kombu.stop()
            _on_rabbitmq(r, rig, app, sizes, w, out, e2e)
            out["e2e"] = e2e
            out["latency"] = lat
            # -- lanes: the urgent topic's latency, idle and behind a bulk backlog -------
            out["lanes"] = lanes(r, rig, w, lane_sizes)
            # -- the backlog: raw consume ceiling, then the bridge's memory draining it --
            task = progress.add_task(
                f"backlog: writing {sizes.backlog:,} records", total=sizes.backlog
            )
            backlog_run = measure._run()
            settings = measure.fill(
                rig,
                backlog_run,
                sizes.backlog,
                tick=lambda done: progress.update(task, completed=done),
            )
            progress.update(task, completed=sizes.backlog)
            out["ceiling"] = {
                "raw_consume": r.rate(
                    "ceiling: raw Kafka consume",
                    sizes.backlog,
                    lambda t: measure.raw_consume_rate(rig, settings.topic, sizes.backlog),
                )
            }
            out["memory"] = r.once(
                f"memory: bridge draining {sizes.backlog:,}",
                sizes.backlog,
                lambda t: measure.memory(
                    rig, backlog_run, settings, sizes.backlog, concurrency=w, tick=t
                ),
                0,
            )
        finally:
            rig.down()
    out["runs"] = r.runs
    out["ratios"] = ratios_of(out)
    out["targets"] = {
        name: {"target": target, "met": ok}
        for name, (target, ok) in targets_of(out["ratios"]).items()
    }


def _end_to_end(
    r: Runner,
    rig: BenchRig,
    app: Celery,
    sizes: Sizes,
    w: int,
    out: dict[str, Any],
    *,
    profile: Path | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """End-to-end rates and submit-to-start latencies of plain Celery and kafcel's two
    paths on W worker processes each; CPU per task into ``out``. With ``profile``, one
    more path B run, its consuming workers under pyinstrument, reports in that directory.

    In an order that starts each Kafka reader once and keeps it until its system's runs
    are over: Celery, the bridge (path A), their latencies (the bridge's first, then
    Celery's with the bridge stopped), then path B's consuming workers. The latency rates
    are fractions of the lower of plain Celery's and the bridge's end-to-end rates, as
    before path B existed; path B runs at the same rates, so each kafcel path is compared
    with plain Celery under the same load.
    """
    workers = measure.Workers(rig=rig, app=app, concurrency=w)
    cpu: dict[str, dict[str, float]] = {name: {} for name in measure.SYSTEMS}
    out["e2e_cpu_us_per_task"] = cpu
    e2e: dict[str, float] = {}
    lat: dict[str, Any] = {}

    def end_to_end(system: str) -> None:
        e2e[system] = _rate(r, rig, workers, system, sizes, f"{_LABELS[system]}, W={w}", cpu)

    def latencies(system: str, top: float) -> None:
        for load in (50, 90):
            rate = top * load / 100
            points = [
                r.once(
                    f"latency: {_LABELS[system]} at {load}% ({rate:.0f}/s)",
                    int(rate * sizes.latency_s),
                    lambda t, q=rate: measure.latency(
                        workers, system, rate=q, duration_s=sizes.latency_s, tick=t
                    ),
                    i,
                )
                for i in range(r.repeat)
            ]
            lat.setdefault(system, {})[str(load)] = {
                k: statistics.median(p[k] for p in points) for k in points[0]
            }

    try:
        end_to_end("celery")
        end_to_end("kafcel")
        top = min(e2e["celery"], e2e["kafcel"])
        latencies("kafcel", top)
        latencies("celery", top)
        end_to_end("kafcel_worker")
        latencies("kafcel_worker", top)
        if profile is not None:
            workers.use("celery")  # the consuming workers start again, profiled
            workers.consume_profile = profile
            workers.use("kafcel_worker")
            send = workers.sender("kafcel_worker")
            measure.e2e_rate(rig, send, min(sizes.e2e, 200))
            r.once(
                "end to end: kafcel in-worker, profiled",
                sizes.e2e,
                lambda t: measure.e2e_rate(rig, send, sizes.e2e, t),
                0,
            )
            out["worker_profile"] = str(profile)
    finally:
        workers.stop()
    return e2e, lat


def _rate(
    r: Runner,
    rig: BenchRig,
    workers: measure.Workers,
    system: str,
    sizes: Sizes,
    label: str,
    cpu: dict[str, dict[str, float]],
    key: str | None = None,
) -> float:
    """End-to-end rate of ``system`` on ``workers``; its CPU per task into ``cpu[key]``."""
    key = key or system
    workers.use(system)
    send = workers.sender(system)
    # Untimed: each worker process's first task (kafcel's clients connect then) is
    # start-up; the group joins are over before use() returns.
    measure.e2e_rate(rig, send, min(sizes.e2e, 200))
    cpu[key] = {}
    return r.rate(
        f"end to end: {label}",
        sizes.e2e,
        lambda t: measure.e2e_rate(rig, send, sizes.e2e, t, watch=workers.processes, cpu=cpu[key]),
    )


def _on_rabbitmq(
    r: Runner,
    rig: BenchRig,
    app: Celery,
    sizes: Sizes,
    w: int,
    out: dict[str, Any],
    e2e: dict[str, float],
) -> None:
    """The bridge path with RabbitMQ as Celery's broker against plain Celery on RabbitMQ,
    on the same workers (Celery's default queue: durable, messages persistent; the
    bridge's batches wait for RabbitMQ's publisher confirms)."""
    workers = measure.Workers(rig=rig, app=app, concurrency=w, celery_broker="rabbitmq")
    out["rabbitmq"] = rig.stack.celery_broker_label("rabbitmq")
    cpu = out["e2e_cpu_us_per_task"]
    try:
        for system in ("celery", "kafcel"):
            key = f"{system}_rabbitmq"
            label = f"{_LABELS[system]} on RabbitMQ, W={w}"
            e2e[key] = _rate(r, rig, workers, system, sizes, label, cpu, key)
    finally:
        workers.stop()


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    # SIGTERM (and SIGINT, even when started in the background with it ignored) stop the
    # run through the same path as Ctrl-C: everything the bench started is stopped.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    console = Console(stderr=args.json)
    began = time.monotonic()
    out: dict[str, Any] = {}
    try:
        run(args, console, out)
    except (KeyboardInterrupt, Exception) as exc:
        # One line, not a traceback (the logs say the rest); what was measured is kept.
        args.out.mkdir(parents=True, exist_ok=True)
        partial = args.out / f"partial-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        partial.write_text(json.dumps(out, indent=2, default=str) + "\n")
        if isinstance(exc, KeyboardInterrupt):
            console.print(f"[red]interrupted[/]; measured so far: {partial}")
            return 130
        console.print(f"[red]bench failed:[/] {type(exc).__name__}: {exc}; so far: {partial}")
        return 1
    out["elapsed_s"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"bench-{stamp}.json"
    png = args.out / f"bench-{stamp}.png"
    out["plot"] = str(png)
    path.write_text(json.dumps(out, indent=2) + "\n")
    draw(out, png)
    console.print(table(out))
    console.print(cpu_table(out))
    console.print(f"results: {path}\nplot: {png}")
    if args.docs:
        write_docs(out, png, DOCS)
        console.print(f"docs: {DOCS}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
