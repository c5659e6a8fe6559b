"""What a bench run shows: the ratios, the targets met or missed, a table and a plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = [
    "cpu_table",
    "draw",
    "lane_ratios",
    "lane_rows",
    "markdown",
    "ratios_of",
    "table",
    "targets_of",
    "write_docs",
]


def ratios_of(out: dict[str, Any]) -> dict[str, float]:
    enqueue, dispatch, e2e = out["enqueue"], out["dispatch"], out["e2e"]
    lat = out["latency"]
    return {
        "submit_vs_send_task": round(enqueue["kafcel_submit"] / enqueue["send_task"], 2),
        # What kafcel keeps of the bare client's rate on the same records (1.0: nothing lost).
        "submit_vs_raw_produce": round(enqueue["kafcel_submit"] / enqueue["raw_produce"], 3),
        "dispatch_vs_send_task": round(dispatch["kafcel_bridge"] / dispatch["send_task"], 2),
        "dispatch_vs_raw_lpush": round(dispatch["kafcel_bridge"] / dispatch["raw_lpush"], 3),
        "e2e_vs_celery": round(e2e["kafcel"] / e2e["celery"], 3),
        "e2e_vs_kombu_kafka": round(e2e["kafcel"] / e2e["kombu_kafka"], 2),
        # Path B: the workers consume Kafka themselves, no bridge.
        "e2e_worker_vs_celery": round(e2e["kafcel_worker"] / e2e["celery"], 3),
        "p99_added_ms": _added_p99(lat, "kafcel"),
        "p99_added_worker_ms": _added_p99(lat, "kafcel_worker"),
        "bridge_rss_mb": round(out["memory"]["bridge_peak_rss_mb"], 1),
        # RabbitMQ as Celery's broker: the bridge path against plain Celery, both on it.
        **(
            {"e2e_rabbitmq_vs_celery": round(e2e["kafcel_rabbitmq"] / e2e["celery_rabbitmq"], 3)}
            if "kafcel_rabbitmq" in e2e
            else {}
        ),
        # Lanes (issue 15): the urgent topic's p99, idle and behind the bulk backlog.
        **(lane_ratios(out["lanes"]) if "lanes" in out else {}),
    }


def lane_ratios(lanes: dict[str, Any]) -> dict[str, float]:
    """The urgent lane's p99 submit-to-start (ms), idle and behind the bulk backlog."""
    return {
        "urgent_p99_ms": round(float(lanes["idle"]["p99_ms"]), 1),
        "urgent_p99_backlog_ms": round(float(lanes["backlog"]["p99_ms"]), 1),
    }


def lane_rows(lanes: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, kafcel, baseline, ratio) rows of the lanes part."""
    idle, busy = lanes["idle"], lanes["backlog"]
    left = f"{busy['bulk_left']:,} left at the end"
    if busy["void"]:
        # The backlog was gone before the urgent tasks were: they did not all face it.
        left = "VOID: the backlog drained before the measurement ended"
    return [
        (
            f"urgent lane submit→start at {lanes['rate']:,.0f}/s, p50/p95/p99 ms",
            f"{busy['records']:,} bulk backlog {busy['p50_ms']:.1f} / {busy['p95_ms']:.1f}"
            f" / {busy['p99_ms']:.1f}",
            f"idle {idle['p50_ms']:.1f} / {idle['p95_ms']:.1f} / {idle['p99_ms']:.1f}",
            f"p99 {busy['p99_ms'] - idle['p99_ms']:+.1f} ms",
        ),
        (
            "bulk lane draining the backlog meanwhile (tasks/s)",
            f"{busy['drain_rate']:,.0f}",
            left,
            "",
        ),
    ]


def _added_p99(lat: dict[str, Any], system: str, load: str = "50") -> float:
    """What ``system`` adds to plain Celery's p99 submit-to-start at the same rate (ms)."""
    return round(float(lat[system][load]["p99_ms"] - lat["celery"][load]["p99_ms"]), 1)


def targets_of(ratios: dict[str, float]) -> dict[str, tuple[str, bool]]:
    """The targets, each with whether this run met it: issue 4's, and issue 12's for Apache
    Kafka (end to end, added latency, submit against the bare client), which replace
    issue 4's end-to-end and latency ones, and issue 14's for path B (the workers consume
    Kafka themselves). ``dispatch_vs_raw_lpush`` has none: it says how far from its floor
    the dispatch is."""
    r = ratios
    return {
        "submit_vs_send_task": (">= 50", r["submit_vs_send_task"] >= 50),
        "submit_vs_raw_produce": (">= 0.5", r["submit_vs_raw_produce"] >= 0.5),
        "dispatch_vs_send_task": (">= 20", r["dispatch_vs_send_task"] >= 20),
        "e2e_vs_celery": (">= 0.9", r["e2e_vs_celery"] >= 0.9),
        "e2e_vs_kombu_kafka": (">= 2", r["e2e_vs_kombu_kafka"] >= 2),
        "p99_added_ms": ("<= 10", r["p99_added_ms"] <= 10),
        "e2e_worker_vs_celery": (">= 1.5", r["e2e_worker_vs_celery"] >= 1.5),
        "p99_added_worker_ms": ("<= 5", r["p99_added_worker_ms"] <= 5),
        "bridge_rss_mb": ("<= 150", r["bridge_rss_mb"] <= 150),
    }


# kafcel's two paths, as the tables name them: through a bridge (A), in the worker (B).
_PATHS = (("kafcel", "bridge"), ("kafcel_worker", "in-worker"))


def _rows(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, kafcel, baseline(s), ratio) rows of the table."""
    e, d, e2e, lat = out["enqueue"], out["dispatch"], out["e2e"], out["latency"]
    ratios = out["ratios"]
    w = out["workers"]
    rows = [
        (
            "enqueue (tasks/s)",
            f"submit {e['kafcel_submit']:,.0f}",
            f"send_task {e['send_task']:,.0f} · kombu-kafka {e['kombu_kafka_send_task']:,.0f}"
            f" · raw produce {e['raw_produce']:,.0f}",
            f"{ratios['submit_vs_send_task']}x send_task, "
            f"{ratios['submit_vs_raw_produce']}x raw produce",
        ),
        (
            "dispatch, no worker (tasks/s)",
            f"bridge {d['kafcel_bridge']:,.0f}",
            f"send_task loop {d['send_task']:,.0f} · raw LPUSH {d['raw_lpush']:,.0f}",
            f"{ratios['dispatch_vs_send_task']}x send_task, "
            f"{ratios['dispatch_vs_raw_lpush']}x raw LPUSH",
        ),
        (
            f"end to end, W={w} (tasks/s)",
            f"bridge {e2e['kafcel']:,.0f}",
            f"Celery {e2e['celery']:,.0f} · kombu-kafka {e2e['kombu_kafka']:,.0f}",
            f"{ratios['e2e_vs_celery']}x Celery, {ratios['e2e_vs_kombu_kafka']}x kombu-kafka",
        ),
        (
            f"end to end, W={w}, no bridge (tasks/s)",
            f"in-worker {e2e['kafcel_worker']:,.0f}",
            f"Celery {e2e['celery']:,.0f}",
            f"{ratios['e2e_worker_vs_celery']}x Celery",
        ),
    ]
    if "kafcel_rabbitmq" in e2e:
        rows.append(
            (
                f"end to end, W={w}, Celery's broker {out.get('rabbitmq', 'RabbitMQ')} (tasks/s)",
                f"bridge {e2e['kafcel_rabbitmq']:,.0f}",
                f"Celery {e2e['celery_rabbitmq']:,.0f}",
                f"{ratios['e2e_rabbitmq_vs_celery']}x Celery",
            )
        )
    for load in ("50", "90"):
        c = lat["celery"][load]
        for system, label in _PATHS:
            k = lat[system][load]
            rows.append(
                (
                    f"submit→start at {load}% ({k['rate']:,.0f}/s), p50/p95/p99 ms",
                    f"{label} {k['p50_ms']:.1f} / {k['p95_ms']:.1f} / {k['p99_ms']:.1f}",
                    f"Celery {c['p50_ms']:.1f} / {c['p95_ms']:.1f} / {c['p99_ms']:.1f}",
                    f"p99 {k['p99_ms'] - c['p99_ms']:+.1f} ms",
                )
            )
    if "lanes" in out:
        rows += lane_rows(out["lanes"])
    m = out["memory"]
    rows.append(
        (
            f"bridge peak RSS, {m['backlog']:,} backlog",
            f"{m['bridge_peak_rss_mb']:.0f} MB",
            f"drained at {m['drain_rate']:,.0f}/s",
            "",
        )
    )
    rows.append(
        (
            "ceiling: raw Kafka consume (records/s)",
            "",
            f"{out['ceiling']['raw_consume']:,.0f}",
            "",
        )
    )
    return rows


def table(out: dict[str, Any]) -> Table:
    t = Table(title=f"kafcel bench on {out['broker']} (medians of {out['repeat']} runs)")
    for name in ("measure", "kafcel", "baseline", "ratio"):
        t.add_column(name)
    for row in _rows(out):
        t.add_row(*row)
    for name, verdict in out["targets"].items():
        met = "[green]met[/]" if verdict["met"] else "[red]missed[/]"
        t.add_row(f"target {name}", str(out["ratios"][name]), verdict["target"], met)
    return t


# The CPU table's columns: system, heading.
_CPU_COLUMNS = (
    ("kafcel", "kafcel bridge"),
    ("kafcel_worker", "kafcel in-worker"),
    ("celery", "Celery"),
    ("kafcel_rabbitmq", "kafcel bridge, RabbitMQ"),
    ("celery_rabbitmq", "Celery, RabbitMQ"),
)


def _cpu_columns(out: dict[str, Any]) -> list[tuple[str, str]]:
    """The columns the run has (runs before RabbitMQ's rows have three)."""
    cpu = out.get("e2e_cpu_us_per_task") or {}
    return [(system, heading) for system, heading in _CPU_COLUMNS if system in cpu]


def _cpu_rows(out: dict[str, Any]) -> list[tuple[str, ...]]:
    """(process, µs/task of each of the run's CPU columns) from the end-to-end runs."""
    cpu = out.get("e2e_cpu_us_per_task") or {}
    columns = [cpu.get(system, {}) for system, _ in _cpu_columns(out)]
    names = sorted(set().union(*columns))
    rows = [(n, *(str(c.get(n, "")) for c in columns)) for n in names]
    rows.append(("total", *(str(sum(c.values())) for c in columns)))
    return rows


def cpu_table(out: dict[str, Any]) -> Table:
    t = Table(title="CPU per task during end to end (µs, last run)")
    for name in ("process", *(heading for _, heading in _cpu_columns(out))):
        t.add_column(name)
    for row in _cpu_rows(out):
        t.add_row(*row)
    return t


def markdown(out: dict[str, Any]) -> str:
    """The run as Markdown for docs/benchmarks.md: machine, command, tables, JSON."""
    m = out["machine"]
    lines = [
        f"Run {out['started_at']} on {m['cpus']} cores ({m['cpu']}), {m['memory_gb']} GiB, "
        f"Python {m['python']}, {m['platform']}; {out['elapsed_s']:.0f} s in all.",
        "",
        f"Broker: {out['broker']} (one node, on the same machine).",
        "",
        f"Command: `{out['command']}` (medians of {out['repeat']} runs each).",
        "",
        "| measure | kafcel | baseline | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in _rows(out)]
    lines += ["", "| target | this run | wanted | |", "|---|---|---|---|"]
    for name, verdict in out["targets"].items():
        met = "met" if verdict["met"] else "**missed**"
        lines.append(f"| {name} | {out['ratios'][name]} | {verdict['target']} | {met} |")
    columns = _cpu_columns(out)
    headings = " | ".join(heading for _, heading in columns)
    rule = "|---" * (len(columns) + 1) + "|"
    lines += ["", f"| CPU per task, end to end (µs) | {headings} |", rule]
    lines += [f"| {' | '.join(row)} |" for row in _cpu_rows(out)]
    ratios = json.dumps({"broker": out["broker"], "ratios": out["ratios"]})
    lines += ["", "The `broker` and `ratios` of the last JSON line:", "", "```json", ratios, "```"]
    return "\n".join(lines)


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_docs(out: dict[str, Any], png: Path, doc: Path) -> None:
    """Put this run's figures between the markers of ``doc``, its plot beside it."""
    shutil.copyfile(png, doc.parent / "benchmarks.png")
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{markdown(out)}\n{END}{tail}")


def draw(out: dict[str, Any], path: Path) -> None:
    """Throughputs (log scale) and latency percentiles, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e, d, e2e, lat = out["enqueue"], out["dispatch"], out["e2e"], out["latency"]
    bars = [
        ("enqueue\nsend_task", e["send_task"], "#999999"),
        ("enqueue\nkombu-kafka", e["kombu_kafka_send_task"], "#cc8844"),
        ("enqueue\nkafcel submit", e["kafcel_submit"], "#2266aa"),
        ("enqueue\nraw produce", e["raw_produce"], "#55aa55"),
        ("dispatch\nkafcel bridge", d["kafcel_bridge"], "#2266aa"),
        ("dispatch\nraw LPUSH", d["raw_lpush"], "#55aa55"),
        ("e2e\nCelery", e2e["celery"], "#999999"),
        ("e2e\nkombu-kafka", e2e["kombu_kafka"], "#cc8844"),
        ("e2e\nkafcel bridge", e2e["kafcel"], "#2266aa"),
        ("e2e\nkafcel in-worker", e2e["kafcel_worker"], "#7744aa"),
        ("raw Kafka\nconsume", out["ceiling"]["raw_consume"], "#55aa55"),
    ]
    if "kafcel_rabbitmq" in e2e:
        bars[-1:-1] = [
            ("e2e RabbitMQ\nCelery", e2e["celery_rabbitmq"], "#999999"),
            ("e2e RabbitMQ\nkafcel bridge", e2e["kafcel_rabbitmq"], "#2266aa"),
        ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(17, 5), gridspec_kw={"width_ratios": [3, 2]})
    xs = range(len(bars))
    left.bar(xs, [b[1] for b in bars], color=[b[2] for b in bars])
    left.set_yscale("log")
    left.set_xticks(list(xs), [b[0] for b in bars], fontsize=7)
    left.set_ylabel("tasks/s (log)")
    left.set_title(f"throughput, W={out['workers']} worker processes")
    for x, (_, value, _) in zip(xs, bars, strict=True):
        left.annotate(f"{value:,.0f}", (x, value), ha="center", va="bottom", fontsize=7)
    labels = ["p50", "p95", "p99"]
    series = [
        ("celery", "Celery", "50", "#bbbbbb"),
        ("kafcel", "kafcel bridge", "50", "#6699cc"),
        ("kafcel_worker", "kafcel in-worker", "50", "#aa88cc"),
        ("celery", "Celery", "90", "#777777"),
        ("kafcel", "kafcel bridge", "90", "#224488"),
        ("kafcel_worker", "kafcel in-worker", "90", "#552288"),
    ]
    points = [(lat[system][load], f"{name} at {load}% load", c) for system, name, load, c in series]
    if "lanes" in out:
        lanes = out["lanes"]
        rate = f"{lanes['rate']:.0f}/s"
        points.append((lanes["idle"], f"bridge, urgent lane at {rate}, idle", "#88cc88"))
        backlog = f"{lanes['backlog']['records']:,} bulk backlog"
        points.append((lanes["backlog"], f"bridge, urgent lane at {rate}, {backlog}", "#226622"))
    width = 0.8 / len(points)
    for i, (point, label, color) in enumerate(points):
        values = [point[f"{p}_ms"] for p in labels]
        offsets = [j + (i - (len(points) - 1) / 2) * width for j in range(3)]
        right.bar(offsets, values, width, color=color, label=label)
    right.set_xticks(range(3), labels)
    # The bridge at 90 % queues for seconds: a linear axis would flatten every other bar.
    right.set_yscale("log")
    right.set_ylabel("submit → start (ms, log)")
    right.set_title("latency")
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"kafcel bench on {out['broker']}, {out['machine']['cpus']} cores, {out['started_at']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
