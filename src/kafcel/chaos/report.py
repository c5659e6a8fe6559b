"""The chaos table on screen and the one-line JSON summary."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from .result import Suite

__all__ = ["json_line", "render"]

_COLUMNS = (
    ("scenario", "name"),
    ("system", "system"),
    ("Celery broker", "broker"),
    ("nodes", "nodes"),
    ("lost", "lost"),
    ("dup effects", "duplicates"),
    ("out of order", "out_of_order"),
    ("unexp.", "unexpected"),
    ("submit failed", "submit_failed"),
    ("DLQ exp.", "dlq_expected"),
    ("DLQ", "dlq"),
    ("peak lag", "peak_lag"),
    ("drain s", "drain_s"),
    ("reruns", "reruns"),
    ("redisp.", "redispatched"),
)


def render(suite: Suite, console: Console, *, n_tasks: int) -> None:
    table = Table(title=f"kafcel chaos — {n_tasks:,} tasks per scenario, on {suite.broker}")
    for title, _ in _COLUMNS:
        left = title in ("scenario", "system", "Celery broker")
        table.add_column(title, justify="left" if left else "right", no_wrap=left)
    table.add_column("verdict")
    for r in suite.results:
        row = r.row()
        cells = ["-" if row.get(k) is None else str(row[k]) for _, k in _COLUMNS]
        verdict = "[green]pass[/]" if r.passed else f"[red]FAIL[/] {r.note}".rstrip()
        table.add_row(*cells, verdict)
    console.print(table)
    console.print(
        "[dim]dup effects: an order's effect applied twice, the effect written through an "
        "inbox keyed by the task id (docs/reliability.md). reruns: task bodies that "
        "completed twice, i.e. what a task without that inbox would have applied twice "
        "(a worker killed between its effect and the once-guard's done marker). "
        "lost, dup effects, out of order and unexp. (unexpected: an effect of a task never "
        "submitted) are read twice, from counters kept as effects arrive and from the "
        "submit and effect histories checked afterwards; lost counts acknowledged "
        "submits only, submit failed those the producer reported not delivered.[/]"
    )


def json_line(suite: Suite) -> str:
    scenarios: list[dict[str, Any]] = [r.row() for r in suite.results]
    return json.dumps({"broker": suite.broker, "scenarios": scenarios})
