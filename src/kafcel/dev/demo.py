"""``kafcel demo``: the whole pipeline on the local stack, with an independent ledger.

Starts the broker (Apache Kafka, or Tansu) and Redis when absent, then on the path it
is given (:data:`PATHS`) one Celery worker that consumes the task topic itself
(``--kafcel-consume``, path B), or one Celery worker and one bridge (path A), as
subprocesses; submits keyed ``process_order`` tasks (some fail once and retry with
backoff) plus a few poison records, waits until every offset is committed, and counts
from the ledger what was lost or doubled. Everything it started is stopped again, also
on Ctrl-C. The summary names the path and the broker as it reports itself
(``apache-kafka 4.4.0``, ``tansu 0.6.0``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Producer as KafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ConfigError, KafcelError, KafkaError
from ..kafka.admin import committed_offsets, end_offsets, ensure_topics, partitions_of
from ..kafka.config import client_config
from ..ops.deadletters import read_dead_letters
from ..ops.render import render_dead_letters, wide_console
from ..ops.status import collect_status, render_status
from ..producer import Producer
from ..protocol.envelope import Envelope
from ..settings import Settings
from ..worker.consume import CONSUME_FLAG
from .demo_tasks import fails_once
from .procs import ManagedProcess, bridge_argv, worker_argv
from .stack import DevStack

__all__ = ["PATHS", "run_demo"]

TASK = "kafcel.dev.demo_tasks.process_order"
APP = "kafcel.dev.demo_tasks:app"
USERS = 1000
# What consumes the task topic: a bridge publishing to Celery's broker (path A), or the
# Celery worker itself (path B). The CLI's default is cli.DEMO_PATH.
PATHS = ("bridge", "worker")
# How long reading the group's offsets may keep failing: on a broker the demo has just
# started, the first consumer's join creates the offsets topic and its coordinator
# answers NOT_COORDINATOR for a few seconds.
_OFFSETS_GRACE_S = 30.0


def _poison(i: int) -> bytes:
    """Three kinds of bad records a careless producer writes, in turn."""
    kind = i % 3
    if kind == 0:
        return b'{"v": 1, "task": "' + TASK.encode() + b'", "args": [1, '  # truncated JSON
    if kind == 1:
        return Envelope(task="kafcel.dev.demo_tasks.no_such_task", args=(i,)).encode()
    return b'{"v": 1, "task": "' + TASK.encode() + b'", "args": "not-a-list"}'


def run_demo(
    *,
    n_tasks: int,
    kafka_port: int = 9092,
    redis_port: int = 6379,
    timeout_s: float = 600.0,
    workdir: Path = Path(".kafcel"),
    broker: str = "kafka",
    path: str,
) -> dict[str, Any]:
    if path not in PATHS:
        raise ConfigError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if n_tasks < 1:
        raise ConfigError(f"n_tasks must be at least 1, got {n_tasks}")
    console = wide_console(stderr=True)
    if threading.current_thread() is threading.main_thread():
        # `kill` of the demo cleans up like Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
    stack = DevStack(
        kafka_port=kafka_port,
        redis_port=redis_port,
        state_dir=workdir / "devstack",
        broker=broker,
        cache_dir=workdir / "kafka",
    )
    run = uuid.uuid4().hex[:8]
    started: list[str] = []
    procs: list[ManagedProcess] = []
    ledger_prefix = f"kafcel:demo:{run}"
    try:
        name = "Apache Kafka" if broker == "kafka" else "Tansu"
        with console.status(f"starting the local stack ({name}, Redis)"):
            started = stack.up()
        label = stack.broker_label()
        settings = Settings(
            bootstrap_servers=stack.bootstrap_servers,
            redis_url=stack.redis_url,
            topic=f"kafcel-demo-{run}",
            group_id=f"kafcel-demo-{run}",
            partitions=8,
            session_timeout_s=6.0,
        )
        ensure_topics(
            settings.bootstrap_servers,
            {settings.topic: 8, settings.results_topic: 8, settings.dlq_topic: 8},
        )
        env = {
            **os.environ,
            **settings.as_env(),
            "KAFCEL_DEMO_QUEUE": f"kafcel-demo-{run}",
            "KAFCEL_DEMO_LEDGER": ledger_prefix,
        }
        logs = workdir / "demo" / run
        consumes = path == "worker"
        argv = worker_argv(APP, queue=f"kafcel-demo-{run}", concurrency=2, name=f"demo-{run}")
        procs.append(
            ManagedProcess(
                name="consuming celery worker" if consumes else "celery worker",
                argv=[*argv, CONSUME_FLAG] if consumes else argv,
                env=env,
                log_path=logs / "worker.log",
            ).start()
        )
        if consumes:
            layout = "1 Celery worker (2 processes) consuming the topic itself, no bridge"
        else:
            procs.append(
                ManagedProcess(
                    name="kafcel bridge",
                    argv=bridge_argv(APP),
                    env=env,
                    log_path=logs / "bridge.log",
                ).start()
            )
            layout = "1 bridge, 1 Celery worker (2 processes)"
        console.print(
            f"run [bold]{run}[/] on {label}, path [bold]{path}[/]: topic {settings.topic}, "
            f"{layout}; logs in {logs}"
        )

        t0 = time.monotonic()
        progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            planted = _submit(settings, n_tasks, progress)
            tps, ends, committed = _wait_settled(settings, procs, progress, timeout_s, console)
        elapsed = time.monotonic() - t0

        ledger: redis.Redis[bytes] = redis.Redis.from_url(settings.redis_url)
        effects = {int(k): int(v) for k, v in ledger.hgetall(f"{ledger_prefix}:effects").items()}
        attempts = {int(k): int(v) for k, v in ledger.hgetall(f"{ledger_prefix}:attempts").items()}
        ledger.delete(f"{ledger_prefix}:effects", f"{ledger_prefix}:attempts")
        lag = sum(max(ends[tp] - (committed.get(tp) or 0), 0) for tp in tps)
        # What an operator sees of the same run (docs/operations.md); its DLQ depth too.
        report = collect_status(settings)
        summary: dict[str, Any] = {
            "run": run,
            "broker": label,
            "path": path,
            "submitted": n_tasks,
            "completed": sum(1 for o in range(n_tasks) if effects.get(o, 0) >= 1),
            "retried": sum(1 for n in attempts.values() if n > 1),
            "retried_planted": sum(1 for o in range(n_tasks) if fails_once(o)),
            "dlq": report["dlq"]["depth"],
            "dlq_planted": planted,
            "lost": sum(1 for o in range(n_tasks) if effects.get(o, 0) == 0),
            "duplicates": sum(1 for n in effects.values() if n > 1),
            "lag": lag,
            "elapsed_s": round(elapsed, 2),
            "tasks_per_s": round(n_tasks / elapsed, 1) if elapsed > 0 else 0.0,
            "status": report,
        }
        _show(console, summary)
        render_status(report, console)
        render_dead_letters(read_dead_letters(settings, limit=6), settings.dlq_topic, console)
        return summary
    finally:
        with console.status("stopping what the demo started"):
            for proc in reversed(procs):
                proc.stop(timeout_s=30)
            stack.stop_started(started)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _submit(settings: Settings, n_tasks: int, progress: Progress) -> int:
    """Submit the orders, with a poison record planted every so often; returns how many."""
    n_poison = max(3, n_tasks // 200)
    poison_every = max(n_tasks // n_poison, 1)
    raw = KafkaProducer({**client_config(settings.bootstrap_servers), "acks": "all"})
    day0 = date(2026, 1, 1)
    planted = 0
    sub = progress.add_task("submitted", total=n_tasks)
    with Producer(settings=settings) as producer:
        for order_id in range(n_tasks):
            day = (day0 + timedelta(days=order_id % 365)).isoformat()
            producer.submit(TASK, args=[order_id, day], key=f"user-{order_id % USERS}")
            if order_id % poison_every == 0 and planted < n_poison:
                raw.produce(settings.topic, value=_poison(planted), key=b"poison")
                planted += 1
            if order_id % 200 == 0:
                progress.update(sub, completed=order_id + 1)
                raw.poll(0)
    if raw.flush(30):
        raise KafcelError("poison records were not delivered to Kafka")
    progress.update(sub, completed=n_tasks)
    return planted


def _wait_settled(
    settings: Settings,
    procs: list[ManagedProcess],
    progress: Progress,
    timeout_s: float,
    console: Console,
) -> tuple[list[tuple[str, int]], dict[tuple[str, int], int], dict[tuple[str, int], int | None]]:
    """Wait until the consumer group has committed every partition to its end."""
    bootstrap = settings.bootstrap_servers
    tps = [(settings.topic, p) for p in partitions_of(bootstrap, settings.topic)]
    ends = end_offsets(bootstrap, tps)
    total = sum(ends.values())
    done = progress.add_task("settled", total=total)
    deadline = time.monotonic() + timeout_s
    committed: dict[tuple[str, int], int | None] = {}
    last_read = time.monotonic()
    while True:
        try:
            committed = committed_offsets(bootstrap, settings.group_id, tps)
            last_read = time.monotonic()
        except KafkaError:
            if time.monotonic() - last_read > _OFFSETS_GRACE_S:
                raise
        settled = sum(min(committed.get(tp) or 0, ends[tp]) for tp in tps)
        progress.update(done, completed=settled)
        if settled >= total:
            return tps, ends, committed
        for proc in procs:
            if not proc.alive():
                raise KafcelError(f"{proc.name} died:\n{proc.tail()}")
        if time.monotonic() > deadline:
            console.print(f"[red]timeout after {timeout_s:.0f}s[/]")
            return tps, ends, committed
        time.sleep(0.5)


def _show(console: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"kafcel demo {s['run']}, path {s['path']}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    ok = "[green]{}[/]"
    bad = "[red]{}[/]"
    rows = [
        ("submitted", s["submitted"], ""),
        ("completed", s["completed"], s["submitted"]),
        ("retried (failed once)", s["retried"], s["retried_planted"]),
        ("dead-lettered", s["dlq"], s["dlq_planted"]),
        ("lost", s["lost"], 0),
        ("duplicate effects", s["duplicates"], 0),
        ("lag at the end", s["lag"], 0),
        ("elapsed (s)", s["elapsed_s"], ""),
        ("tasks/s", s["tasks_per_s"], ""),
    ]
    for name, value, expected in rows:
        fmt = ok if expected == "" or value == expected else bad
        table.add_row(name, fmt.format(value), str(expected))
    console.print(table)
