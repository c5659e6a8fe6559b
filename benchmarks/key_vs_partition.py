"""Key-ordered against partition-ordered dispatch: 20 ms tasks, 8 worker processes, 4 partitions.

In ``partition`` mode a partition has one task in flight at a time, so at most 4 of the 8
worker processes are busy; in ``key`` mode each key has one, so different keys of one
partition run side by side. Run: ``.venv/bin/python benchmarks/key_vs_partition.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kafcel.chaos.ledger import Ledger
from kafcel.chaos.rig import ChaosStack, KafcelRig
from kafcel.chaos.runner import chaos_settings
from kafcel.chaos.workload import make_workload, submit
from kafcel.kafka.admin import ensure_topics


def measure(stack: ChaosStack, mode: str, n_tasks: int, work_ms: float, log_dir: Path) -> float:
    run = uuid.uuid4().hex[:8]
    settings = chaos_settings(stack, run).replace(ordering=mode, max_in_flight=2000)
    ensure_topics(
        settings.bootstrap_servers,
        {t: 4 for t in (settings.topic, settings.results_topic, settings.dlq_topic)},
    )
    workload = make_workload(run=run, n_tasks=n_tasks, poison_ratio=0.0, seed=3)
    ledger = Ledger(url=stack.ledger_url, run=run)
    rig = KafcelRig(stack=stack, settings=settings, log_dir=log_dir / mode)
    try:
        rig.start_worker(concurrency=8)
        rig.start_bridge()
        started = time.monotonic()
        submit(settings, workload, work_ms=work_ms, ledger=ledger)
        deadline = started + 600
        while ledger.counts().applied_orders < n_tasks:
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: not drained within 600 s")
            time.sleep(0.2)
        return n_tasks / (time.monotonic() - started)
    finally:
        rig.stop()
        ledger.clear()
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--work-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json)
    with tempfile.TemporaryDirectory(prefix="kafcel-order-bench-") as tmp:
        stack = ChaosStack(state_dir=Path(tmp))
        try:
            stack.up()
            rates = {}
            for mode in ("partition", "key"):
                with console.status(f"{mode} mode: {args.tasks} tasks of {args.work_ms} ms"):
                    rates[mode] = measure(stack, mode, args.tasks, args.work_ms, Path(tmp))
        finally:
            stack.down()
    table = Table(title=f"{args.tasks} tasks of {args.work_ms:.0f} ms, 8 processes, 4 partitions")
    table.add_column("ordering")
    table.add_column("tasks/s", justify="right")
    for mode, rate in rates.items():
        table.add_row(mode, f"{rate:.0f}")
    console.print(table)
    ratio = rates["key"] / rates["partition"]
    console.print(f"key / partition = {ratio:.2f}x")
    if args.json:
        print(json.dumps({"tasks": args.tasks, "work_ms": args.work_ms, **rates, "ratio": ratio}))


if __name__ == "__main__":
    main()
