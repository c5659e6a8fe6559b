"""Celery side of kafcel: ``install(app)``.

It makes kafcel's messages safe to run (``acks_late`` and requeue on worker loss for
those messages only, :mod:`kafcel.worker.acks`), puts the once-guard in front of every
task kafcel dispatched (:mod:`kafcel.worker.guarded`), and publishes each final outcome
to the results topic from the worker process that ran the task. Tasks sent by plain
``delay()``/``apply_async()`` carry no ``kafcel`` header and run with the app's own
settings.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import click
from celery import Celery
from celery.signals import (
    task_revoked,
    task_unknown,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from ..errors import ConfigError
from ..guard.lease import pool_check
from ..protocol.outcome import REVOKED_BY_OPERATOR, Origin
from ..settings import Settings
from ..telemetry.logs import worker_logs
from .acks import per_message_acks
from .consume import CONSUME_FLAG, consume_step
from .guarded import guard_task, killed_by_time_limit, never_ran
from .origin import HEADER, origin_of
from .process import WorkerProcess

__all__ = ["app_from_env", "install", "load_app"]

# Marks an app whose worker flag and consuming step are added.
_CONSUMES = "_kafcel_consume_step"


def install(app: Celery, *, settings: Settings | None = None) -> Celery:
    """Configure ``app`` for kafcel and guard its tasks. Safe to call more than once.

    App-wide, only what a worker needs to run kafcel's messages: JSON among the accepted
    contents (the bridge sends JSON; the app's own serializer is left alone), and a
    prefetch of one message per process (a worker-wide Celery setting: a prefetched
    message is one a dying worker takes down with it until the broker's visibility
    timeout). Acks are per message (:mod:`kafcel.worker.acks`).
    """
    accept = list(app.conf.accept_content or [])
    if "json" not in accept and "application/json" not in accept:
        app.conf.accept_content = [*accept, "json"]
    app.conf.worker_prefetch_multiplier = 1
    state = WorkerProcess(settings)

    def timed_out(request: Any, timeout_s: float) -> None:
        origin = Origin.from_header(request.request_dict.get(HEADER))
        if origin is not None:
            killed_by_time_limit(state, origin, request, timeout_s)

    def guard_all(sender: Any = None, **_: Any) -> None:
        for task in list(app.tasks.values()):
            per_message_acks(task, HEADER, on_hard_timeout=timed_out)
            guard_task(task, state)

    def on_revoked(
        sender: Any = None,
        request: Any = None,
        expired: bool = False,
        terminated: bool = False,
        **_: Any,
    ) -> None:
        # An expired or revoked task never reaches task.run (or, terminated, never
        # returns from it), so without this its record would wait for an outcome.
        if request is None or getattr(sender, "app", app) is not app:
            return
        origin = origin_of(request)  # the task's Context: headers are its attributes
        if origin is None:
            return
        if expired:
            reason, what = "TaskExpired", "expired before a worker could run it"
        elif terminated:
            reason, what = REVOKED_BY_OPERATOR, "was revoked and its process terminated"
        else:
            reason, what = REVOKED_BY_OPERATOR, "was revoked"
        message = f"the task {what}"
        never_ran(
            state,
            origin,
            request.id,
            sender.name,
            reason,
            message,
            killed=terminated,
            request=request,
        )

    def on_unknown(
        sender: Any = None, name: str = "", id: str = "", message: Any = None, **_: Any
    ) -> None:
        # The bridge's app knows the task but this worker's does not: Celery drops the
        # message, so the record must be settled (and dead-lettered) from here.
        headers = getattr(message, "headers", None) or {}
        origin = Origin.from_header(headers.get(HEADER))
        if origin is not None:
            reason = "the task is not registered in this worker's Celery app"
            never_ran(state, origin, id, name, "TaskUnknownOnWorker", reason)

    def start_metrics(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            state.start_metrics()

    def process_ended(pid: int | None = None, **_: Any) -> None:
        state.flush_outcomes()
        if state.metrics is not None:
            from ..telemetry.metrics import worker_process_ended

            worker_process_ended(pid)

    app.on_after_finalize.connect(guard_all, weak=False)
    # Tasks registered after finalize (late imports) are guarded when a worker starts.
    worker_init.connect(guard_all, weak=False)
    worker_process_init.connect(guard_all, weak=False)
    # In the main process, before the pool forks: its children inherit the metrics.
    worker_init.connect(start_metrics, weak=False)
    # Where the pool is known (the CLI's -P, worker_pool), and before it is loaded.
    worker_init.connect(pool_check(app), weak=False)
    worker_logs(lambda: (settings or Settings.from_env()).log_format)
    # Outcomes still lingering in the producer leave with the process, not without it.
    worker_process_shutdown.connect(process_ended, weak=False)
    atexit.register(state.flush_outcomes)
    task_revoked.connect(on_revoked, weak=False)
    task_unknown.connect(on_unknown, weak=False)
    if app.finalized:
        guard_all()
    _consume_option(app, settings, state)
    return app


def _consume_option(app: Celery, settings: Settings | None, state: WorkerProcess) -> None:
    """The worker flag and consumer bootstep of path B (:mod:`kafcel.worker.consume`)."""
    if getattr(app, _CONSUMES, False):
        return
    setattr(app, _CONSUMES, True)
    app.user_options["worker"].add(
        click.Option(
            [CONSUME_FLAG],
            is_flag=True,
            default=False,
            help="kafcel: consume the Kafka task topic in this worker (no bridge needed)",
        )
    )
    app.steps["consumer"].add(consume_step(settings, flush_outcomes=state.flush_outcomes))


class _EnvConfig:
    """Celery reads these attributes on first use of ``app.conf``, not at import."""

    def __init__(self, queue_env: str, default_queue: str) -> None:
        self._queue_env = queue_env
        self._default_queue = default_queue

    @property
    def broker_url(self) -> str:
        return Settings.from_env().redis_url

    @property
    def result_backend(self) -> str:
        return Settings.from_env().redis_url

    @property
    def task_default_queue(self) -> str:
        return os.environ.get(self._queue_env, self._default_queue)

    result_expires = 3600
    broker_connection_retry_on_startup = True
    # Keep reconnecting while Redis restarts, rather than giving up after 100 tries.
    broker_connection_max_retries = None
    worker_hijack_root_logger = False


def app_from_env(name: str, *, queue_env: str, default_queue: str) -> Celery:
    """A kafcel-installed Celery app on the Redis of ``KAFCEL_REDIS_URL`` (broker and
    results), its default queue from ``queue_env``: the demo's, the chaos suite's and the
    tests' apps. Nothing is read from the environment until Celery needs it."""
    app = Celery(name)
    app.config_from_object(_EnvConfig(queue_env, default_queue))
    return install(app)


def load_app(spec: str) -> Celery:
    """Import a Celery app from ``pkg.module:app`` (or ``pkg.module``, finding ``app``)."""
    from celery.app.utils import find_app

    try:
        app = find_app(spec)
    except Exception as exc:
        raise ConfigError(f"cannot load Celery app {spec!r}: {exc}") from exc
    if not isinstance(app, Celery):
        raise ConfigError(f"{spec!r} is not a Celery app")
    return app
