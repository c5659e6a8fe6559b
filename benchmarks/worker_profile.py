"""Where path B's time goes: plain Celery and the consuming workers, process by process
and thread by thread, then the consuming workers under pyinstrument.

Starts the bench's own stack (:class:`~benchmarks.rig.BenchRig`), runs ``--tasks``
trivial tasks end to end through plain Celery and through W workers started with
``--kafcel-consume`` (the bench's ``celery`` and ``kafcel_worker`` rows, after the same
untimed warm-up), one after the other, ``--rounds`` times, and records the CPU per task
of every process and of each thread of the worker's main process (Celery's event loop,
the consuming thread, librdkafka's). Then path B once more with the consuming workers profiled
(:mod:`benchmarks.profiled_worker`: one report per thread and pool process). Writes
``benchmarks/results/worker-profile/`` (``summary.json`` and the reports).

    .venv/bin/python -m benchmarks.worker_profile [--tasks N] [--workers W] [--rounds R]
        [--kafka-config key=value,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from . import measure
from .rig import BenchRig

RESULTS = Path(__file__).resolve().parent / "results" / "worker-profile"


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each kind of thread of ``pid``: the main thread, librdkafka's
    (they name themselves ``rdk:…``), and the other Python threads (Python 3.11 leaves
    them unnamed: the consuming thread among them)."""
    out: dict[str, float] = defaultdict(float)
    for thread in psutil.Process(pid).threads():
        try:
            comm = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue
        if thread.id == pid:
            kind = "main thread"
        elif comm.startswith("rdk:"):
            kind = "librdkafka threads"
        else:
            kind = "other threads"
        out[kind] += thread.user_time + thread.system_time
    return dict(out)


def _measure(workers: measure.Workers, system: str, n: int) -> dict[str, Any]:
    workers.use(system)
    send = workers.sender(system)
    measure.e2e_rate(workers.rig, send, min(n, 200))
    running = workers.consumer if system == "kafcel_worker" else workers.worker
    assert running is not None
    before = thread_cpu_s(running.pid)
    cpu: dict[str, float] = {}
    rate = measure.e2e_rate(workers.rig, send, n, watch=workers.processes, cpu=cpu)
    after = thread_cpu_s(running.pid)
    threads = {k: round((after[k] - before.get(k, 0.0)) / n * 1e6) for k in after}
    return {"rate": rate, "cpu_us_per_task": cpu, "worker_main_threads_us_per_task": threads}


def profile(
    n: int, concurrency: int, rounds: int, out: Path, kafka_config: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``kafka_config``: librdkafka settings of the consuming workers' clients, over
    kafcel's (e.g. fetches that wait to batch records: what the broker's CPU costs)."""
    from .app import app

    rig = BenchRig(state_dir=Path(tempfile.mkdtemp(prefix="kafcel-worker-profile-")))
    rig.up()
    try:
        workers = measure.Workers(rig=rig, app=app, concurrency=concurrency)
        if kafka_config:
            workers.consume_settings = workers.consume_settings.replace(kafka_config=kafka_config)
        try:
            summary: dict[str, Any] = {
                "broker": rig.broker_label,
                "tasks": n,
                "workers": concurrency,
                "kafka_config": list(kafka_config),
                "rounds": [],
            }
            # A fresh JVM spends rounds compiling (its C2 compiler shares the cores): the
            # broker's CPU per task falls round after round; the last round is the warm one.
            for _ in range(rounds):
                summary["rounds"].append(
                    {s: _measure(workers, s, n) for s in ("celery", "kafcel_worker")}
                )
            workers.use("celery")  # stops the consuming workers
            workers.consume_profile = out
            profiled = _measure(workers, "kafcel_worker", n)
            summary["kafcel_worker_profiled_rate"] = profiled["rate"]
        finally:
            workers.stop()  # the profiles are written as the workers stop
    finally:
        rig.down()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="unprofiled rounds first")
    parser.add_argument(
        "--kafka-config",
        default="",
        help="librdkafka settings of the consuming workers, key=value,… (over kafcel's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = tuple(item for item in args.kafka_config.split(",") if item)
    summary = profile(args.tasks, args.workers, args.rounds, args.out, extra)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
