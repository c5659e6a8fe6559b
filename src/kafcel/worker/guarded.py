"""The task wrapper ``install(app)`` puts around every task: the once-guard in front of
the body, then the final outcome recorded, dead-lettered when it is a failure, and
published to the results topic; and the settling of a task that never runs (revoked,
expired, unknown to this worker).
"""

from __future__ import annotations

import functools
import logging
import numbers
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from ..errors import BrokerError, KafcelError, TaskLost
from ..protocol.deadletter import DeadLetter
from ..protocol.envelope import Envelope
from ..protocol.outcome import FAILURE, REVOKED, SUCCESS, Origin, Outcome
from ..telemetry.logs import EVENTS_LOGGER, task_fields
from .origin import HEADER, origin_of
from .process import WorkerProcess
from .replace import follow_replacement

__all__ = ["guard_task", "killed_by_time_limit", "never_ran"]

log = logging.getLogger("kafcel.worker")
events = logging.getLogger(EVENTS_LOGGER)

_WRAPPED = "__kafcel_guarded__"
_REPLACED = "_kafcel_replaced"
# A copy that finds its id running elsewhere comes back after at most this long.
_MAX_BACKOFF_S = 5.0


def guard_task(task: Task, state: WorkerProcess) -> None:
    """Put the once-guard in front of ``task``'s body, for the messages kafcel sent."""
    run: Callable[..., Any] = task.run
    if getattr(run, _WRAPPED, False):
        return

    @functools.wraps(run)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        request = task.request
        origin = origin_of(request)
        if origin is None or request.id is None or getattr(request, "is_eager", False):
            return run(*args, **kwargs)
        try:
            claim = state.guard.claim(request.id, retries=int(request.retries or 0))
        except BrokerError as exc:
            # Without the guard we cannot tell whether this id already ran: hand the
            # message back rather than run it blind or drop it.
            log.warning("kafcel: %s; requeueing %s", exc, request.id)
            time.sleep(1.0)
            raise Reject(str(exc), requeue=True) from exc
        metrics = state.metrics
        if claim.done is not None:
            if metrics is not None:
                metrics.skipped(task.name, "done")
            log.info(
                "kafcel: %s already finished; re-announcing its outcome",
                request.id,
                extra=task_fields("skipped", task.name, request.id, origin, reason="done"),
            )
            if claim.dead_letter_pending:
                # The failed attempt stopped before Kafka had its dead letter (a crash, a
                # failed write): write it now, from this copy of the request.
                letter = _letter(task.name, origin, claim.done)
                _dead_letter_or_requeue(state, origin, letter, args, kwargs, request)
            _publish_or_requeue(state, origin, claim.done.announced_for(origin))
            raise Ignore()
        if not claim.acquired:
            if metrics is not None:
                metrics.skipped(task.name, "busy")
            countdown = min(claim.running_ttl_s or _MAX_BACKOFF_S, _MAX_BACKOFF_S)
            log.info("kafcel: %s runs elsewhere; checking again in %.1fs", request.id, countdown)
            try:
                task.signature_from_request(request).apply_async(countdown=countdown)
            except Exception as exc:
                # The broker blinked: hand this copy back instead of failing the task.
                raise Reject(f"cannot re-send {request.id}: {exc}", requeue=True) from exc
            raise Ignore()
        if claim.attempt > state.max_attempts:
            lost = TaskLost(
                f"the worker running this task died {claim.attempt - 1} time(s) "
                f"(max_attempts={state.max_attempts}); not running it again"
            )
            _finish(task, state, origin, args, kwargs, exc=lost)
            raise lost
        state.keeper.hold(request.id, claim.leased_at)
        started = time.monotonic()
        try:
            result = run(*args, **kwargs)
        except Retry as exc:
            if metrics is not None:
                metrics.attempted(task.name, "retry", started)
            # Not final: Celery delivers this id again, and that copy must be allowed to
            # run; until then the id stays live, so the bridge does not send it again.
            state.end_attempt(
                request.id,
                retry_in_s=_retry_delay_s(exc),
                retries=int(request.retries or 0) + 1,
            )
            raise
        except Reject as exc:
            if exc.requeue:
                state.end_attempt(request.id)
            else:
                _finish(task, state, origin, args, kwargs, exc=exc, started=started)
            raise
        except Ignore:
            if getattr(request, _REPLACED, False):
                # self.replace(): the replacement runs under this id and announces the
                # record's outcome (worker/replace.py).
                raise
            # The task chose to end without a state: its record settles as a success
            # with no result.
            _finish(task, state, origin, args, kwargs, result=None, started=started)
            raise
        except Exception as exc:
            _finish(task, state, origin, args, kwargs, exc=exc, started=started)
            raise
        except BaseException:
            # Ctrl-C in a solo worker, a greenlet killed: not the task's verdict.
            state.end_attempt(request.id)
            raise
        _finish(task, state, origin, args, kwargs, result=result, started=started)
        return result

    setattr(guarded, _WRAPPED, True)
    task.run = guarded
    follow_replacement(task, HEADER, origin_of, state.hand_over, _REPLACED)


def _finish(
    task: Task,
    state: WorkerProcess,
    origin: Origin,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    result: Any = None,
    exc: BaseException | None = None,
    started: float | None = None,
) -> None:
    """Record, count and publish the final outcome of an attempt that began at ``started``
    (monotonic; None: refused without running)."""
    request = task.request
    retries = int(request.retries or 0)
    if exc is None:
        outcome = _outcome(origin, request.id, task.name, SUCCESS, result=result, retries=retries)
    else:
        outcome = _outcome(
            origin,
            request.id,
            task.name,
            FAILURE,
            retries=retries,
            error_class=type(exc).__name__,
            error_message=str(exc),
        )
    # A failure is done, flagged until its dead letter is on Kafka: whatever stops this
    # attempt from here on, the next copy of the id writes the dead letter instead of
    # running again, and the outcome that settles the record goes out only after it.
    # An attempt whose lease was taken over stops here (Ignore), neither counted nor
    # announced.
    recorded = state.record_done(outcome, dead_letter_pending=exc is not None)
    status = "success" if exc is None else "failure"
    if state.metrics is not None:
        state.metrics.finished(task.name, status, started, origin.timestamp_ms)
    if events.isEnabledFor(logging.INFO):
        ran_ms = None if started is None else round((time.monotonic() - started) * 1000, 1)
        fields = task_fields("finished", task.name, request.id, origin, status=status)
        fields["kafcel"].update(
            runtime_ms=ran_ms, retries=retries, error_class=exc and type(exc).__name__
        )
        events.info("finished %s: %s", request.id, status, extra=fields)
    if exc is None:
        # Without the done marker nothing could re-announce a lost outcome: wait for it.
        _publish_or_requeue(state, origin, outcome, wait=not recorded)
        return
    letter = _letter(task.name, origin, outcome, "".join(traceback.format_exception(exc)))
    _dead_letter_or_requeue(state, origin, letter, args, kwargs, request)
    _publish_or_requeue(state, origin, outcome)
    if state.metrics is not None:
        state.metrics.dead_lettered(task.name, letter.error_class)


def _letter(task: str, origin: Origin, outcome: Outcome, trace: str | None = None) -> DeadLetter:
    """The dead letter of a task that failed for good (``outcome``)."""
    return DeadLetter(
        error_class=outcome.error_class or "Exception",
        error_message=outcome.error_message or "",
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
        stage="worker",
        task=task,
        task_id=outcome.task_id,
        attempts=outcome.retries + 1,
        replays=origin.replays,
        traceback=trace,
    )


def _write_dead_letter(
    state: WorkerProcess,
    origin: Origin,
    letter: DeadLetter,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    request: Any,
) -> None:
    """Write a failure's dead letter and clear the marker's flag; raise KafcelError if
    Kafka does not take it. The worker no longer has the original bytes: the value is
    the request rebuilt."""
    assert letter.task is not None
    value = _rebuild(letter.task, args, kwargs, request, origin)
    state.write_dead_letter(origin, value, letter)


def _dead_letter_or_requeue(
    state: WorkerProcess,
    origin: Origin,
    letter: DeadLetter,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    request: Any,
) -> None:
    try:
        _write_dead_letter(state, origin, letter, args, kwargs, request)
    except KafcelError as exc:
        # The marker says the dead letter is pending: the requeued copy writes it.
        log.warning("kafcel: %s; requeueing %s", exc, letter.task_id)
        raise Reject(str(exc), requeue=True) from exc


def _retry_delay_s(exc: Retry) -> float:
    """Seconds until Celery delivers the retry (``Retry.when``: a countdown or an ETA)."""
    when = exc.when
    if isinstance(when, numbers.Real):
        return float(when)
    if isinstance(when, datetime):
        # Celery reads a naive ETA as UTC (its default timezone), not as local time.
        aware = when if when.tzinfo else when.replace(tzinfo=UTC)
        return max((aware - datetime.now(UTC)).total_seconds(), 0.0)
    return 0.0


def _outcome(origin: Origin, task_id: str, task: str, status: str, **fields: Any) -> Outcome:
    """An outcome carrying its request's origin (topic, partition, offset, headers, trace)."""
    return Outcome(
        task_id=task_id,
        task=task,
        status=status,
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
        headers=origin.headers,
        trace_id=origin.trace_id,
        fence=origin.fence,
        **fields,
    )


def _publish_or_requeue(
    state: WorkerProcess, origin: Origin, outcome: Outcome, *, wait: bool = True
) -> None:
    try:
        state.publish(origin, outcome, wait=wait)
    except KafcelError as exc:
        # The done marker is set: the requeued copy re-announces the outcome, so the
        # effect is not repeated and the record still settles once Kafka is back.
        log.warning("kafcel: %s; requeueing %s", exc, outcome.task_id)
        raise Reject(str(exc), requeue=True) from exc


def never_ran(
    state: WorkerProcess,
    origin: Origin,
    task_id: str,
    task: str,
    reason: str,
    message: str,
    *,
    killed: bool = False,
    request: Any = None,
) -> None:
    """Settle a task that will not run (on): a REVOKED outcome. The bridge dead-letters
    it unless an operator revoked it (``REVOKED_BY_OPERATOR``, see KAFCEL_DLQ_REVOKED).
    ``killed``: revoke(terminate=True) ended the process holding the id's lease.
    ``request`` (args, kwargs, delivery info) rebuilds a dead letter still owed by an
    earlier attempt that failed."""
    outcome = _outcome(origin, task_id, task, REVOKED, error_class=reason, error_message=message)
    try:
        current = state.guard.finish_if_absent(outcome)
        if current is None:
            state.publish(origin, outcome)
        elif current.done is not None:
            if current.dead_letter_pending:
                # An earlier attempt failed and stopped before Kafka had its dead letter:
                # it goes first, or this announcement would settle the record without it.
                args = tuple(getattr(request, "args", None) or ())
                kwargs = dict(getattr(request, "kwargs", None) or {})
                letter = _letter(task, origin, current.done)
                _write_dead_letter(state, origin, letter, args, kwargs, request)
            state.publish(origin, current.done.announced_for(origin))
        elif killed:
            # The lease belongs to the process just terminated: it will never announce.
            # Its lease is taken over if the process is already gone; the outcome goes
            # out either way (had it finished in the same instant, the first one settles).
            state.guard.finish_over(outcome)
            state.publish(origin, outcome)
        # else another copy of this id runs right now and will announce itself
    except KafcelError:
        log.exception("kafcel: could not settle %s (%s)", task_id, reason)


def killed_by_time_limit(
    state: WorkerProcess, origin: Origin, request: Any, timeout_s: float
) -> None:
    """A hard time limit killed the process running ``request`` (a worker ``Request``):
    nothing there could announce it, so its failure is recorded, dead-lettered and
    announced from the worker's main process, as the task wrapper would have done.

    Off the event loop's thread: a killed process that could not end its claim holds
    the id's lease until the pool has reaped it."""
    retries = int(request.request_dict.get("retries") or 0)
    outcome = _outcome(
        origin,
        request.id,
        request.name,
        FAILURE,
        retries=retries,
        error_class="TimeLimitExceeded",
        error_message=f"the task exceeded its hard time limit ({timeout_s:g}s) and its "
        "process was killed",
    )
    args, kwargs = tuple(request.args or ()), dict(request.kwargs or {})

    def settle() -> None:
        try:
            deadline = time.monotonic() + state.guard.lease_s
            while True:
                # The killed attempt leaves its lease (prefork children die at the pool's
                # SIGTERM without a handler, or at its SIGKILL): taken over once the pool
                # has reaped the process. Absent (it lapsed), the id is simply free.
                current = state.guard.finish_if_absent(outcome, dead_letter_pending=True)
                if current is None:
                    break
                if current.done is not None:
                    return  # it finished after all, or another copy did: theirs stands
                if state.guard.finish_over(outcome, dead_letter_pending=True):
                    break
                if time.monotonic() > deadline:
                    log.warning("kafcel: %s still held a lease after its time limit", request.id)
                    return
                time.sleep(0.05)
            letter = _letter(request.name, origin, outcome)
            _write_dead_letter(state, origin, letter, args, kwargs, request)
            state.publish(origin, outcome)
        except KafcelError:
            # The done marker says its dead letter is pending: a copy of the id (the
            # redispatch check sends one) writes it and announces the outcome.
            log.exception("kafcel: could not settle %s after its time limit", request.id)

    threading.Thread(target=settle, name="kafcel-time-limit", daemon=True).start()


def _rebuild(
    task: str, args: tuple[Any, ...], kwargs: dict[str, Any], request: Any, origin: Origin
) -> bytes:
    """The request as an envelope with the same id, queue and priority: what the DLQ
    holds for a replay (which must reach the same workers)."""
    delivery = getattr(request, "delivery_info", None) or {}
    priority = delivery.get("priority")
    try:
        return Envelope(
            task=task,
            args=args,
            kwargs=kwargs,
            id=request.id,
            queue=delivery.get("routing_key") or None,
            priority=priority if isinstance(priority, int) and 0 <= priority <= 9 else None,
            headers=origin.headers,
            trace_id=origin.trace_id,
        ).encode()
    except KafcelError:
        return repr((task, args, kwargs)).encode()
