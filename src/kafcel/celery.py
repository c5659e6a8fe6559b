"""Celery side of kafcel: ``install(app)``.

It makes the app safe to feed from Kafka (JSON only, ``acks_late``, requeue on worker
loss), puts the once-guard in front of every task kafcel dispatched, and publishes each
final outcome to the results topic from the worker process that ran the task. Tasks sent
by plain ``delay()``/``apply_async()`` carry no ``kafcel`` header and run untouched.
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import task_revoked
from confluent_kafka import Producer

from .dlq import DeadLetter, dlq_headers
from .envelope import Envelope
from .errors import KafcelError
from .once import OnceGuard
from .results import FAILURE, REVOKED, SUCCESS, Origin, Outcome
from .settings import Settings

__all__ = ["HEADER", "install", "origin_of"]

log = logging.getLogger("kafcel.worker")

HEADER = "kafcel"
_WRAPPED = "__kafcel_guarded__"
# A copy that finds its id running elsewhere comes back after at most this long.
_MAX_BACKOFF_S = 5.0


def install(app: Celery, *, settings: Settings | None = None) -> Celery:
    """Configure ``app`` for kafcel and guard its tasks. Safe to call more than once."""
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: a prefetched message is a message that a
        # dying worker takes down with it until the broker's visibility timeout.
        worker_prefetch_multiplier=1,
    )
    state = _WorkerState(settings)
    app.conf.kafcel_state = state

    def guard_all(sender: Any = None, **_: Any) -> None:
        for task in list(app.tasks.values()):
            _guard(task, state)

    def on_revoked(
        sender: Any = None, request: Any = None, expired: bool = False, **_: Any
    ) -> None:
        # An expired or revoked task never reaches task.run, so without this its record
        # would wait for an outcome forever.
        if request is None or getattr(sender, "app", app) is not app:
            return
        _revoked(str(getattr(sender, "name", "")), request, state, expired=expired)

    app.on_after_finalize.connect(guard_all, weak=False)
    task_revoked.connect(on_revoked, weak=False)
    if app.finalized:
        guard_all()
    return app


def origin_of(request: Any) -> Origin | None:
    """The kafcel origin of a task request, or ``None`` if kafcel did not dispatch it."""
    raw = getattr(request, HEADER, None)
    if raw is None:
        raw = (getattr(request, "headers", None) or {}).get(HEADER)
    return Origin.from_header(raw)


class _WorkerState:
    """Per-process clients; created lazily because prefork children must not share them."""

    def __init__(self, settings: Settings | None) -> None:
        self._settings = settings
        self._pid = -1
        self._producer: Producer | None = None
        self._guard: OnceGuard | None = None
        self._inherited: list[Producer] = []

    def _ensure(self) -> tuple[Settings, Producer, OnceGuard]:
        if self._pid != os.getpid() or self._producer is None or self._guard is None:
            if self._producer is not None:
                # A client inherited through fork must never be destroyed here: librdkafka
                # would wait for threads that only exist in the parent.
                self._inherited.append(self._producer)
            settings = self._settings or Settings.from_env()
            self._settings = settings
            config: dict[str, Any] = {
                "bootstrap.servers": settings.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
            }
            config.update(settings.librdkafka())
            self._producer = Producer(config)
            client: redis.Redis[bytes] = redis.Redis.from_url(settings.redis_url)
            self._guard = OnceGuard(
                client=client,
                lease_s=settings.once_lease_s,
                done_ttl_s=settings.once_done_ttl_s,
            )
            self._pid = os.getpid()
        assert self._settings is not None
        return self._settings, self._producer, self._guard

    @property
    def guard(self) -> OnceGuard:
        return self._ensure()[2]

    def publish(
        self, origin: Origin, outcome: Outcome, dead: tuple[bytes, DeadLetter] | None = None
    ) -> None:
        settings, producer, _ = self._ensure()
        key = origin.key.encode("utf-8", "surrogateescape") if origin.key is not None else None
        if dead is not None:
            value, letter = dead
            producer.produce(
                origin.dlq_topic or settings.dlq_topic,
                value=value,
                key=key,
                headers=dlq_headers(letter, None),
            )
        producer.produce(
            origin.results_topic or settings.results_topic, value=outcome.encode(), key=key
        )
        # The outcome is what lets the bridge commit; it must be on Kafka before the
        # broker message is acked, or a crash here would leave the offset unsettled.
        remaining = producer.flush(30)
        if remaining:
            log.error(
                "kafcel: %d outcome record(s) not delivered for %s", remaining, outcome.task_id
            )


def _guard(task: Task, state: _WorkerState) -> None:
    run: Callable[..., Any] = task.run
    if getattr(run, _WRAPPED, False):
        return

    @functools.wraps(run)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        request = task.request
        origin = origin_of(request)
        if origin is None or request.id is None or getattr(request, "is_eager", False):
            return run(*args, **kwargs)
        claim = state.guard.claim(request.id)
        if claim.done is not None:
            log.info("kafcel: %s already finished; re-announcing its outcome", request.id)
            state.publish(origin, claim.done.with_duplicate())
            raise Ignore()
        if not claim.acquired:
            countdown = min(claim.running_ttl_s or _MAX_BACKOFF_S, _MAX_BACKOFF_S)
            log.info("kafcel: %s runs elsewhere; checking again in %.1fs", request.id, countdown)
            task.signature_from_request(request).apply_async(countdown=countdown)
            raise Ignore()
        try:
            result = run(*args, **kwargs)
        except (Retry, Ignore, Reject):
            # Not final: Celery will deliver this id again, which must be allowed to run.
            state.guard.release(request.id)
            raise
        except BaseException as exc:
            _finish(task, state, origin, args, kwargs, exc=exc)
            raise
        _finish(task, state, origin, args, kwargs, result=result)
        return result

    setattr(guarded, _WRAPPED, True)
    task.run = guarded


def _finish(
    task: Task,
    state: _WorkerState,
    origin: Origin,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    result: Any = None,
    exc: BaseException | None = None,
) -> None:
    request = task.request
    common: dict[str, Any] = {
        "task_id": request.id,
        "task": task.name,
        "retries": int(request.retries or 0),
        "origin_topic": origin.topic,
        "origin_partition": origin.partition,
        "origin_offset": origin.offset,
        "headers": origin.headers,
        "trace_id": origin.trace_id,
    }
    if exc is None:
        outcome = Outcome(status=SUCCESS, result=result, **common)
        dead = None
    else:
        outcome = Outcome(
            status=FAILURE,
            error_class=type(exc).__name__,
            error_message=str(exc),
            **common,
        )
        dead = DeadLetter(
            error_class=type(exc).__name__,
            error_message=str(exc),
            origin_topic=origin.topic,
            origin_partition=origin.partition,
            origin_offset=origin.offset,
            stage="worker",
            task=task.name,
            task_id=request.id,
            attempts=int(request.retries or 0) + 1,
            traceback="".join(traceback.format_exception(exc))[-8000:],
        )
    try:
        state.guard.finish(outcome)
    except KafcelError:
        log.exception("kafcel: could not record %s as done", request.id)
    if dead is None:
        state.publish(origin, outcome)
        return
    # The worker no longer has the original bytes: the DLQ value is the request rebuilt.
    state.publish(
        origin, outcome, dead=(_rebuild(task.name, args, kwargs, request.id, origin), dead)
    )


def _revoked(task_name: str, request: Any, state: _WorkerState, *, expired: bool) -> None:
    # ``request`` is the task's Context: custom message headers are attributes of it.
    origin = origin_of(request)
    if origin is None:
        return
    reason = "TaskExpired" if expired else "TaskRevoked"
    message = (
        "the task expired before a worker could run it"
        if expired
        else "the task was revoked before it ran"
    )
    outcome = Outcome(
        task_id=request.id,
        task=task_name,
        status=REVOKED,
        error_class=reason,
        error_message=message,
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
        headers=origin.headers,
        trace_id=origin.trace_id,
    )
    letter = DeadLetter(
        error_class=reason,
        error_message=message,
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
        stage="worker",
        task=task_name,
        task_id=request.id,
        attempts=0,
    )
    try:
        state.guard.finish(outcome)
    except KafcelError:
        log.exception("kafcel: could not record %s as revoked", request.id)
    value = _rebuild(
        task_name, tuple(request.args or ()), dict(request.kwargs or {}), request.id, origin
    )
    state.publish(origin, outcome, dead=(value, letter))


def _rebuild(
    task: str, args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str, origin: Origin
) -> bytes:
    """The request as an envelope with the same id: what the DLQ holds for a replay."""
    try:
        return Envelope(
            task=task,
            args=args,
            kwargs=kwargs,
            id=task_id,
            headers=origin.headers,
            trace_id=origin.trace_id,
        ).encode()
    except KafcelError:
        return repr((task, args, kwargs)).encode()
