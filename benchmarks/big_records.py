"""The bridge's memory with 1 MiB records: peak RSS against its byte budget.

A backlog of large records drains through the bridge at its byte budget
(``max_in_flight_bytes``); the same number of small records measures the bridge's fixed
base (Python, Celery, librdkafka's own buffers). The bridge runs alone first, so it
takes records until its budget stops it, then workers drain the backlog; the large
runs' peak minus their budget is the fixed cost of large records, whatever the budget.
Run: ``.venv/bin/python -m benchmarks.big_records``.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kafcel.producer import Producer
from kafcel.protocol.envelope import Envelope

from .measure import memory
from .rig import BenchRig

MIB = 1 << 20


def drain(
    rig: BenchRig, *, records: int, size: int, budget: int, progress: Progress
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    # The records alone bound the bridge: a count limit far above the backlog.
    settings = rig.settings(run, max_in_flight_bytes=budget, max_in_flight=100_000)
    payload = "x" * size
    sending = progress.add_task(f"writing {records} records of {size:,} bytes", total=records)
    # Kafka's default message.max.bytes (1,000,000) is below kafcel's 1 MiB record limit.
    with Producer(settings=settings, config={"message.max.bytes": 2 * MIB}) as producer:
        for i in range(records):
            producer.send(Envelope(task="bench.blob", args=(run, i, payload)), key=f"k{i}")
            progress.advance(sending)
    draining = progress.add_task("draining through the bridge", total=records)
    tick = functools.partial(progress.update, draining)
    drained = memory(
        rig,
        run,
        settings,
        records,
        concurrency=4,
        tick=lambda n: tick(completed=n),
        bridge_alone_first=True,
    )
    return {
        "records": records,
        "record_bytes": size,
        "budget_mb": budget / MIB,
        "dispatched_before_workers": drained["dispatched_before_workers"],
        "bridge_peak_rss_mb": round(drained["bridge_peak_rss_mb"], 1),
        "drain_s": round(drained["drain_s"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--budgets-mb", default="32,96", help="byte budgets of the large runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json)
    budgets = [int(b) * MIB for b in args.budgets_mb.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kafcel-big-bench-") as tmp:
        rig = BenchRig(state_dir=Path(tmp))
        try:
            rig.up()
            with Progress(console=console, transient=True) as progress:
                rows.append(
                    drain(rig, records=args.records, size=100, budget=budgets[0], progress=progress)
                )
                # Just under kafcel's 1 MiB record limit, with the envelope around it.
                for budget in budgets:
                    rows.append(
                        drain(
                            rig,
                            records=args.records,
                            size=MIB - 256,
                            budget=budget,
                            progress=progress,
                        )
                    )
        finally:
            rig.down()
    base = rows[0]["bridge_peak_rss_mb"]
    for row in rows[1:]:
        row["over_budget_mb"] = round(row["bridge_peak_rss_mb"] - row["budget_mb"], 1)
    table = Table(title=f"bridge peak RSS draining {args.records} records")
    for column in ("record", "budget MiB", "peak RSS MB", "peak - budget MB", "drain s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['record_bytes']:,} B",
            f"{row['budget_mb']:.0f}",
            f"{row['bridge_peak_rss_mb']:.0f}",
            str(row.get("over_budget_mb", "")),
            f"{row['drain_s']}",
        )
    console.print(table)
    fixed = [row["over_budget_mb"] for row in rows[1:]]
    console.print(
        f"small records peak {base:.0f} MB; with 1 MiB records the peak stays at the budget "
        f"plus {min(fixed):.0f}-{max(fixed):.0f} MB whatever the budget"
    )
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
