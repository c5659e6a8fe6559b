"""``kafcel`` command line: bridge, submit, status, dev, demo.

Every failure the user can cause or fix is one line on stderr and a non-zero exit code;
tracebacks are for bugs, and even those are cut to one line unless ``KAFCEL_DEBUG`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import ConfigError, KafcelError
from .settings import Settings

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


# What each command reads of Settings: its --help lists those as flags. Every setting
# still comes from its KAFCEL_* variable too, listed or not.
_SECURITY = tuple(
    f.name for f in fields(Settings) if f.name.startswith(("security_", "sasl_", "ssl_"))
)
_CONNECT = ("bootstrap_servers", "kafka_config", *_SECURITY)
_SUBMIT = (*_CONNECT, "topic")
# Redis: the replay marks a dead letter shows; a replay clears the stored failure.
# topics: the lanes, whose DLQ topics and task topics the operator tools read.
_DLQ = (*_CONNECT, "topic", "topics", "dlq_topic", "redis_url")
_DLQ_REPLAY = (*_DLQ, "result_backend", "once_lease_s", "once_done_ttl_s")
_RANGE_REPLAY = (*_CONNECT, "topic", "topics", "max_record_bytes")
_STATUS = (*_DLQ, "group_id", "result_backend", "lag_window_s")
_DASHBOARD = (*_STATUS, "once_lease_s", "once_done_ttl_s", "log_format", "dashboard_token")
# The workers' own (install(app) reads them), and the operator tools'.
_NOT_BRIDGE = {"worker_consume", "worker_metrics_port", "max_attempts", "result_backend"}
_NOT_BRIDGE |= {"lag_window_s", "dashboard_token"}
_BRIDGE = tuple(f.name for f in fields(Settings) if f.name not in _NOT_BRIDGE)


def settings_options(names: tuple[str, ...]) -> Callable[[F], F]:
    """Add a ``--flag`` per Settings field in ``names``; unset flags fall back to
    ``KAFCEL_*``."""
    by_name = {f.name: f for f in fields(Settings)}

    def add(func: F) -> F:
        for name in reversed(names):
            f = by_name[name]
            click_type: Any = {"int": int, "float": float}.get(str(f.type), str)
            func = click.option(
                "--" + name.replace("_", "-"),
                name,
                type=click_type,
                default=None,
                help=f"{f.metadata.get('help', '')} [env KAFCEL_{name.upper()}]",
            )(func)
        return func

    return add


def build_settings(options: dict[str, Any]) -> Settings:
    """Settings from the command's flags (popped from ``options``), then ``KAFCEL_*``."""
    return Settings.from_env(**{f.name: options.pop(f.name, None) for f in fields(Settings)})


@click.group()
@click.version_option(package_name="kafcel")
def cli() -> None:
    """Kafka-driven task scheduling for Celery."""


@cli.command()
@click.option("-A", "--app", "app_spec", required=True, help="Celery app, pkg.module:app")
@click.option("--log-level", default="INFO", show_default=True)
@settings_options(_BRIDGE)
def bridge(app_spec: str, log_level: str, **options: Any) -> None:
    """Run the bridge: Kafka task topic -> Celery, offsets committed when settled."""
    from .bridge import loop_for
    from .telemetry.logs import setup_logging
    from .worker import load_app

    settings = build_settings(options)
    setup_logging(log_level, settings.log_format)
    logging.getLogger("kafcel.kafka").setLevel(logging.WARNING)
    sys.path.insert(0, os.getcwd())
    app = load_app(app_spec)
    code = loop_for(
        settings, app=app, on_ready=lambda: print("kafcel bridge ready", flush=True)
    ).run()
    sys.exit(code)


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


@cli.command()
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--key", "-k", default=None, help="ordering key (user id, order id...)")
@click.option("--kwargs", "kwargs_json", default=None, help='keyword arguments as JSON, {"a": 1}')
@click.option("--id", "task_id", default=None, help="idempotency key / Celery task id")
@click.option("--countdown", type=float, default=None)
@click.option("--queue", default=None)
@click.option("--priority", type=int, default=None)
@settings_options(_SUBMIT)
def submit(
    task: str,
    args: tuple[str, ...],
    key: str | None,
    kwargs_json: str | None,
    task_id: str | None,
    countdown: float | None,
    queue: str | None,
    priority: int | None,
    **options: Any,
) -> None:
    """Submit TASK with ARGS (each parsed as JSON when it is JSON, else a string)."""
    from .producer import Producer

    settings = build_settings(options)
    kwargs: dict[str, Any] = {}
    if kwargs_json:
        try:
            parsed = json.loads(kwargs_json)
        except ValueError as exc:
            raise ConfigError(f"--kwargs is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ConfigError("--kwargs must be a JSON object")
        kwargs = parsed
    with Producer(settings=settings) as producer:
        producer.check_reachable()
        tid = producer.submit(
            task,
            args=[_json_or_str(a) for a in args],
            kwargs=kwargs,
            key=key,
            id=task_id,
            countdown=countdown,
            queue=queue,
            priority=priority,
        )
    click.echo(tid)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
@click.option("--check", is_flag=True, help="exit 2 unless every partition is OK")
@settings_options(_STATUS)
def status(as_json: bool, check: bool, **options: Any) -> None:
    """Lag and its evaluation per partition (of every lane), bridges, task states, DLQ by
    error class."""
    from .ops.status import collect_status, render_status, unhealthy

    settings = build_settings(options)
    report = collect_status(settings)
    if as_json:
        click.echo(json.dumps(report))
    else:
        render_status(report)
    overall = report["evaluation"]["status"]
    if check and overall != "OK":
        bad = ", ".join(unhealthy(report))
        click.echo(f"kafcel: status {overall}: partitions {bad}", err=True)
        sys.exit(2)


def _dlq_filter_options(func: F) -> F:
    for option in reversed(
        [
            click.option("--task", default=None, help="task name (glob: tasks.*)"),
            click.option("--error-class", default=None, help="error class (glob: Schema*)"),
            click.option("--key", default=None, help="record key, exact"),
            click.option("--since", default=None, help="failed at or after (ISO, -1h, now)"),
            click.option("--until", default=None, help="failed at or before (ISO, -1h, now)"),
        ]
    ):
        func = option(func)
    return func


def _dlq_filter(options: dict[str, Any]) -> Any:
    from .ops.deadletters import DlqFilter

    names = ("task", "error_class", "key", "since", "until")
    return DlqFilter.parse(**{name: options.pop(name) for name in names})


@cli.group()
def dlq() -> None:
    """The dead-letter topics (of every lane): list, show and replay records."""


@dlq.command("list")
@_dlq_filter_options
@click.option(
    "--limit", type=click.IntRange(min=0), default=50, show_default=True, help="newest N (0: all)"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@settings_options(_DLQ)
def dlq_list(limit: int, as_json: bool, **options: Any) -> None:
    """Dead letters, newest last, with why each one failed."""
    from .kafka.lanes import dlq_topics, lanes_of
    from .ops.deadletters import read_dead_letters
    from .ops.render import render_dead_letters

    flt = _dlq_filter(options)
    settings = build_settings(options)
    lanes = lanes_of(settings)
    records = read_dead_letters(settings, flt, limit=limit or None, lanes=lanes)
    if as_json:
        for record in records:
            click.echo(json.dumps(record.as_dict()))
    else:
        render_dead_letters(records, ", ".join(dlq_topics(lanes)))


@dlq.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@settings_options(_DLQ)
def dlq_show(ref: str, as_json: bool, **options: Any) -> None:
    """One dead letter in full (REF as `dlq list` shows it: [DLQ_TOPIC:]PARTITION:OFFSET)."""
    from .ops.deadletters import find_by_ref
    from .ops.render import render_dead_letter

    record = find_by_ref(build_settings(options), ref)
    if as_json:
        click.echo(json.dumps(record.as_dict(full=True)))
    else:
        render_dead_letter(record)


@dlq.command("replay")
@click.argument("refs", nargs=-1)
@_dlq_filter_options
@click.option("--new-id", is_flag=True, help="run under a new task id (default: the same id)")
@click.option("--again", is_flag=True, help="also replay records replayed before")
@click.option("--all", "everything", is_flag=True, help="every dead letter (no REFS, no filter)")
@click.option("--dry-run", is_flag=True, help="show what would be replayed, send nothing")
@click.option("--json", "as_json", is_flag=True)
@settings_options(_DLQ_REPLAY)
def dlq_replay(
    refs: tuple[str, ...],
    new_id: bool,
    again: bool,
    everything: bool,
    dry_run: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Write dead letters back to the task topic each came from: REFS
    ([DLQ_TOPIC:]PARTITION:OFFSET), the filters' matches, or --all."""
    from .kafka.lanes import lanes_of
    from .ops.deadletters import DlqFilter, replay_dead_letters, select_dead_letters
    from .ops.render import render_dlq_replay

    flt = _dlq_filter(options)
    if not refs and flt == DlqFilter() and not everything:
        raise ConfigError("name the records (their refs), filter them, or pass --all")
    settings = build_settings(options)
    lanes = lanes_of(settings)
    records = select_dead_letters(settings, refs, flt, lanes=lanes)
    report = replay_dead_letters(
        settings, records, new_id=new_id, again=again, dry_run=dry_run, lanes=lanes
    )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        render_dlq_replay(report, dry_run=dry_run)


@cli.command()
@click.option("--from", "since", required=True, help="start (ISO 8601, -2h, now)")
@click.option("--to", "until", default=None, help="end (default: now)")
@click.option("--task", default=None, help="only this task (glob)")
@click.option("--key", default=None, help="only this record key")
@click.option("--same-id", is_flag=True, help="keep ids: what already finished is skipped")
@click.option("--include-replays", is_flag=True, help="also copies from earlier replays")
@click.option("--dry-run", is_flag=True, help="count per task, send nothing")
@click.option("--json", "as_json", is_flag=True)
@settings_options(_RANGE_REPLAY)
def replay(
    since: str,
    until: str | None,
    task: str | None,
    key: str | None,
    same_id: bool,
    include_replays: bool,
    dry_run: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Submit a time range of the task topic (with lanes: of the lane --topic names) again
    (offsets looked up by time)."""
    from .ops.render import progress_bar, render_range_replay
    from .ops.replay import parse_time, replay_range

    settings = build_settings(options)
    with progress_bar("reading " + settings.topic, quiet=as_json) as on_progress:
        report = replay_range(
            settings,
            since=parse_time(since),
            until=parse_time(until) if until else None,
            task=task,
            key=key,
            new_id=not same_id,
            include_replays=include_replays,
            dry_run=dry_run,
            on_progress=on_progress,
        )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        render_range_replay(report)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--log-level", default="WARNING", show_default=True)
@settings_options(_DASHBOARD)
def dashboard(host: str, port: int, log_level: str, **options: Any) -> None:
    """Serve a live web page: lag per partition, throughput, task states, the DLQ."""
    from .ops.dashboard import serve
    from .telemetry.logs import setup_logging

    settings = build_settings(options)
    setup_logging(log_level, settings.log_format)
    serve(settings=settings, host=host, port=port)


@cli.group()
def dev() -> None:
    """The local stack: Apache Kafka (or Tansu), Redis, and RabbitMQ if asked for."""


_STATE_DIR = Path(".kafcel/devstack")


def _stack(
    kafka_port: int,
    redis_port: int,
    broker: str | None,
    brokers: int | None,
    rabbitmq: bool | None = None,
) -> Any:
    from .dev import DevStack

    # down and status act on what the last `up` started, unless told otherwise.
    return DevStack.remembered(
        _STATE_DIR,
        kafka_port=kafka_port,
        redis_port=redis_port,
        broker=broker,
        brokers=brokers,
        rabbitmq=rabbitmq,
    )


_kafka_port = click.option("--kafka-port", type=int, default=9092, show_default=True)
_redis_port = click.option("--redis-port", type=int, default=6379, show_default=True)


def _broker_option(default: str | None, help_text: str) -> Callable[[F], F]:
    return click.option(
        "--broker",
        type=click.Choice(["kafka", "tansu"]),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def _brokers_option(default: str | None) -> Callable[[F], F]:
    return click.option(
        "--brokers",
        type=click.Choice(["1", "3"]),
        default=default,
        show_default=default is not None,
        help="Apache Kafka nodes: 1, or 3 (replication 3, min.insync.replicas=2)",
    )


_broker = _broker_option(None, "Apache Kafka (default) or Tansu; status: what the last up started")
_brokers = _brokers_option(None)


@dev.command("up")
@_kafka_port
@_redis_port
@_broker
@_brokers
@click.option(
    "--rabbitmq",
    is_flag=True,
    help="also RabbitMQ (Debian's rabbitmq-server, AMQP port 5672), as Celery's broker",
)
def dev_up(
    kafka_port: int, redis_port: int, broker: str | None, brokers: str | None, rabbitmq: bool
) -> None:
    """Start what is not running."""
    stack = _stack(kafka_port, redis_port, broker or "kafka", int(brokers or 1), rabbitmq)
    if not stack.runtime.fetched() and stack.broker == "kafka":
        click.echo(f"fetching Apache Kafka {stack.runtime.version} from Maven Central (once)")
    started = stack.up()
    stack.remember()
    click.echo(f"started: {', '.join(started) or 'nothing (all running)'}")
    click.echo(f"broker: {stack.broker_label()}")
    click.echo(f"KAFCEL_BOOTSTRAP_SERVERS={stack.bootstrap_servers}")
    click.echo(f"KAFCEL_REDIS_URL={stack.redis_url}")
    if rabbitmq:
        # Celery's own variable: it wins over an app's broker_url.
        click.echo(f"CELERY_BROKER_URL={stack.rabbitmq_url}")


@dev.command("down")
@_kafka_port
@_redis_port
def dev_down(kafka_port: int, redis_port: int) -> None:
    """Stop what `kafcel dev up` started (never services it found running)."""
    stopped = _stack(kafka_port, redis_port, None, None).down()
    click.echo(f"stopped: {', '.join(stopped) or 'nothing'}")


@dev.command("status")
@_kafka_port
@_redis_port
@_broker
@_brokers
def dev_status(kafka_port: int, redis_port: int, broker: str | None, brokers: str | None) -> None:
    """Show whether the broker, Redis (and RabbitMQ) answer, their versions, and who
    started them."""
    count = int(brokers) if brokers else None
    for s in _stack(kafka_port, redis_port, broker, count).status():
        state = "running" if s.running else "down"
        owner = f"started by kafcel (pid {s.pid})" if s.managed else "external"
        detail = f"{s.version:20} {owner}" if s.running else ""
        click.echo(f"{s.name:8} {s.address:22} {state:8} {detail}".rstrip())


# The path `kafcel demo` (and `make demo`) runs unless told: the worker consuming the
# task topic itself. Same guarantees as a bridge, with fewer processes and no broker hop
# for first attempts; the benchmark (docs/benchmarks.md) settles which is faster, so flip
# it here if it says otherwise.
DEMO_PATH = "worker"


@cli.command()
@click.option("--tasks", "n_tasks", type=int, default=10_000, show_default=True)
@click.option(
    "--path",
    type=click.Choice(["bridge", "worker"]),
    default=DEMO_PATH,
    show_default=True,
    help="what consumes the task topic: a Celery worker started with --kafcel-consume "
    "(path B, no bridge), or a bridge publishing to Celery's broker (path A)",
)
@click.option("--json", "as_json", is_flag=True, help="end with one JSON summary line")
@click.option("--kafka-port", type=int, default=9092, show_default=True)
@click.option("--redis-port", type=int, default=6379, show_default=True)
@click.option("--timeout-s", type=float, default=600.0, show_default=True)
@_broker_option("kafka", "the broker to run on (started when absent): Apache Kafka or Tansu")
def demo(
    n_tasks: int,
    path: str,
    as_json: bool,
    kafka_port: int,
    redis_port: int,
    timeout_s: float,
    broker: str,
) -> None:
    """Run the whole pipeline on the local stack and show what happened."""
    from .dev.demo import run_demo

    if n_tasks < 1:
        raise ConfigError("--tasks must be at least 1")
    summary = run_demo(
        n_tasks=n_tasks,
        kafka_port=kafka_port,
        redis_port=redis_port,
        timeout_s=timeout_s,
        broker=broker,
        path=path,
    )
    if as_json:
        click.echo(json.dumps(summary))
    if summary["lost"] or summary["duplicates"] or summary["lag"]:
        sys.exit(1)


@cli.command()
@click.option("--tasks", "n_tasks", type=int, default=10_000, show_default=True)
@click.option("--only", multiple=True, help="run only this scenario (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="end with one JSON summary line")
@click.option("--seed", type=int, default=1, show_default=True)
@_broker_option("kafka", "the suite's own broker: Apache Kafka or Tansu")
@_brokers_option("1")
def chaos(
    n_tasks: int, only: tuple[str, ...], as_json: bool, seed: int, broker: str, brokers: str
) -> None:
    """Inject faults into a running pipeline; count lost, duplicate and out-of-order effects."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .chaos.report import json_line, render
    from .chaos.runner import run_suite, select
    from .ops.render import wide_console

    scenarios = select(only, broker=broker)
    console = wide_console(stderr=as_json)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bars: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in bars:
                bars[name] = progress.add_task(name, total=total)
            progress.update(bars[name], completed=done, total=total)

        def on_result(result: Any) -> None:
            verdict = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
            progress.console.print(
                f"{result.system:11} {result.name:15} lost={result.lost} "
                f"dup={result.duplicates} ooo={result.out_of_order} "
                f"dlq={result.dlq}/{result.dlq_expected} drain={result.drain_s:.0f}s {verdict}"
            )
            bars.pop(result.name, None)

        # Ctrl-C or SIGTERM ends the run between samples; the suite then stops every
        # process it started before exiting.
        cancel = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: cancel.set())
        suite = run_suite(
            n_tasks=n_tasks,
            scenarios=scenarios,
            on_progress=on_progress,
            on_result=on_result,
            seed=seed,
            cancel=cancel,
            keep_logs=Path(".kafcel/chaos-logs"),
            broker=broker,
            brokers=int(brokers),
            on_broker=lambda label: progress.console.print(f"broker: {label}"),
        )
    render(suite, console, n_tasks=n_tasks)
    if as_json:
        click.echo(json_line(suite))
    if not all(r.passed for r in suite.results if r.system == "kafcel"):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    # librdkafka retries noisily while a broker is unreachable; a CLI command reports that
    # once, as its own error line. The bridge turns these logs back on (see bridge()).
    logging.getLogger("kafcel.kafka").setLevel(logging.CRITICAL + 1)
    try:
        cli.main(args=argv, prog_name="kafcel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KafcelError as exc:
        click.echo(f"kafcel: error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("KAFCEL_DEBUG"):
            raise
        click.echo(f"kafcel: unexpected error ({type(exc).__name__}): {exc}", err=True)
        sys.exit(1)
