"""What the operator commands print: rich tables for the DLQ and replays, a progress bar."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .deadletters import DeadLetterRecord, DlqReplay
    from .replay import RangeReplay

__all__ = [
    "progress_bar",
    "render_dead_letter",
    "render_dead_letters",
    "render_dlq_replay",
    "render_range_replay",
    "wide_console",
]


def wide_console(*, stderr: bool = False) -> Console:
    """A console for tables: in logs, CI and cron mails (no terminal) 160 columns wide,
    not rich's default 80, which folds every cell."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def render_dead_letters(
    records: Sequence[DeadLetterRecord], topic: str, console: Console | None = None
) -> None:
    console = console or wide_console()
    if not records:
        console.print(f"[green]no dead letters in {topic} match[/]")
        return
    table = Table(title=f"{topic}: {len(records)} record(s)")
    # Which lane each came from, when they come from several (or several DLQ topics).
    origins = len({r.origin_topic for r in records}) > 1 or any(r.qualified for r in records)
    columns = ["ref", *(["origin"] if origins else []), "time", "task", "error class"]
    for col in (*columns, "message", "key", "stage", "att.", "repl."):
        table.add_column(col, overflow="fold")
    for r in records:
        d = r.as_dict()
        replayed = " [green](replayed)[/]" if r.replayed else ""
        table.add_row(
            r.ref,
            *([r.origin_topic or "?"] if origins else []),
            r.timestamp.strftime("%Y-%m-%d %H:%M:%S") if r.timestamp else "-",
            d["task"] or "-",
            f"[red]{d['error_class']}[/]",
            (d["error_message"] or "")[:80] + replayed,
            d["key"] or "-",
            d["stage"] or "-",
            str(d["attempts"]),
            str(d["replays"]),
        )
    console.print(table)


def render_dead_letter(record: DeadLetterRecord) -> None:
    console = wide_console()
    d = record.as_dict(full=True)
    table = Table(show_header=False, title=f"dead letter {record.ref}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in ("timestamp", "task", "task_id", "key", "error_class", "error_message", "field"):
        if d.get(name) is not None:
            table.add_row(name, str(d[name]))
    origin = d["origin"]
    table.add_row("dlq topic", record.topic)
    table.add_row("origin", f"{origin['topic']}[{origin['partition']}]@{origin['offset']}")
    table.add_row("stage", str(d["stage"]))
    table.add_row("attempts / replays", f"{d['attempts']} / {d['replays']}")
    if d["replayed"]:
        table.add_row("replayed", json.dumps(d["replayed"]))
    for name, value in d["headers"].items():
        table.add_row(f"header {name}", str(value))
    console.print(table)
    if d["value_dropped_bytes"]:
        console.print(f"[yellow]value not kept: {d['value_dropped_bytes']} bytes[/]")
    elif isinstance(d["value"], dict | list):
        console.print_json(data=d["value"])
    else:
        console.print(repr(d["value"]))
    if d.get("traceback"):
        console.print(d["traceback"], markup=False, highlight=False)


def render_dlq_replay(report: DlqReplay, *, dry_run: bool) -> None:
    console = wide_console()
    verb = "would replay" if dry_run else "replayed"
    table = Table(title=f"{verb} {len(report.submitted)} record(s)")
    for col in ("ref", "to topic", "task", "task id"):
        table.add_column(col)
    for entry in report.submitted:
        table.add_row(
            entry["ref"],
            str(entry["topic"]),
            str(entry["task"] or "-"),
            str(entry["task_id"] or "(new)"),
        )
    if report.submitted:
        console.print(table)
    for entry in report.skipped:
        console.print(f"[yellow]skipped {entry['ref']}: {entry['reason']}[/]")
    if not report.submitted and not report.skipped:
        console.print("[green]no dead letters match[/]")


def render_range_replay(report: RangeReplay) -> None:
    console = wide_console()
    verb = "would submit" if report.dry_run else "submitted"
    table = Table(
        title=f"{report.since} .. {report.until or 'now'}: {report.scanned} record(s) in "
        f"range, {report.read} read"
    )
    table.add_column("task")
    table.add_column(verb, justify="right")
    for task, count in sorted(report.per_task.items()):
        table.add_row(task, str(count))
    table.add_section()
    table.add_row("total", str(sum(report.per_task.values())))
    console.print(table)
    for reason, count in report.skipped.items():
        console.print(f"[yellow]skipped {count}: {reason}[/]")


@contextlib.contextmanager
def progress_bar(label: str, *, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A rich bar on stderr fed by ``(done, total)`` calls; silent with ``quiet``."""
    if quiet:
        yield lambda done, total: None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        bar: list[Any] = []

        def update(done: int, total: int) -> None:
            if not bar:
                bar.append(progress.add_task(label, total=total))
            progress.update(bar[0], completed=done, total=total)

        yield update
