"""Hand a batch of records to Celery's broker in one round trip.

Each task is built and published by Celery's own code (``app.amqp.create_task_message``
and ``send_task_message``: routing, ``task_routes``, the ``before_task_publish`` and
``after_task_publish`` signals, protocol 2), so it stays one ordinary Celery message per
task that workers, Flower and ``celery inspect`` see as such. What ``send_task`` adds and
the bridge leaves out is a broker round trip per task: inside ``Producer.batch()``
(kombu 5.7) the Redis transport pipelines a whole batch's LPUSHes into one request, and
the result backend's ``on_task_call`` is skipped, which on Redis subscribes to every task's
result channel; the bridge never waits on a result, so those subscriptions would only pile
up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery

from ..celery import HEADER
from ..errors import BrokerError, DispatchRefused
from .dispatch import Dispatch, StopSending

__all__ = ["Publisher"]

# (index in the batch, task name, Celery's message, send_task_message options)
_Prepared = tuple[int, str, Any, dict[str, Any]]

log = logging.getLogger("kafcel.bridge")


class Publisher:
    def __init__(
        self,
        *,
        app: Celery,
        retryable: tuple[type[BaseException], ...],
        stop: threading.Event,
    ) -> None:
        if not isinstance(app, Celery):
            raise TypeError("app must be a Celery app")
        self.app = app
        self._retryable = retryable
        self._stop = stop
        self.round_trips = 0

    def publish(self, items: Sequence[Dispatch]) -> list[DispatchRefused | None]:
        """Send ``items`` in order; per item None once Celery has it, else why it refused.

        While the broker is down the whole batch is tried again (never dropped): a copy
        that reached Redis before the connection broke is absorbed by the once-guard. A
        stop request ends the wait with :class:`StopSending`; the records stay unsettled.
        """
        refusals: list[DispatchRefused | None] = [None] * len(items)
        prepared: list[_Prepared] = []
        for index, item in enumerate(items):
            try:
                prepared.append((index, item.envelope.task, *self._build(item)))
            except Exception as exc:
                # Not the broker's state but this record's (Celery cannot build it).
                refusals[index] = _refused(exc)
        delay_s = 0.1
        while prepared:
            try:
                refused = self._send(prepared)
            except self._retryable as exc:
                error = BrokerError(f"Celery broker unavailable for {len(prepared)} task(s): {exc}")
                log.warning("%s; retrying in %.1fs", error, delay_s)
                if self._stop.wait(delay_s):
                    raise StopSending() from exc
                delay_s = min(delay_s * 2, 5.0)
                continue
            for index, reason in refused.items():
                refusals[index] = reason
            break
        return refusals

    def _build(self, item: Dispatch) -> tuple[Any, dict[str, Any]]:
        """Celery's message for ``item`` and the options ``send_task_message`` takes."""
        app, envelope = self.app, item.envelope
        args, kwargs = list(envelope.args), dict(envelope.kwargs)
        options: dict[str, Any] = {"headers": {HEADER: item.origin.to_header()}}
        if envelope.queue is not None:
            options["queue"] = envelope.queue
        if envelope.priority is not None:
            options["priority"] = envelope.priority
        # task_routes and the default queue, exactly as send_task resolves them.
        options = app.amqp.router.route(options, envelope.task, args, kwargs)
        message = app.amqp.create_task_message(
            item.task_id,
            envelope.task,
            args,
            kwargs,
            eta=item.eta,
            expires=item.expires,
            reply_to=app.thread_oid,
            create_sent_event=app.conf.task_send_sent_event,
            ignore_result=app.conf.task_ignore_result,
        )
        options["serializer"] = "json"
        return message, options

    def _send(self, prepared: list[_Prepared]) -> dict[int, DispatchRefused]:
        """One batch on one connection; raises a retryable error if the broker failed."""
        refused: dict[int, DispatchRefused] = {}
        amqp = self.app.amqp
        with self.app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None)  # kombu >= 5.7
            scope = batch(max_size=4 * len(prepared) + 8) if batch else contextlib.nullcontext()
            with scope:
                for index, name, message, options in prepared:
                    try:
                        amqp.send_task_message(producer, name, message, retry=False, **options)
                    except self._retryable:
                        raise
                    except Exception as exc:
                        refused[index] = _refused(exc)
        self.round_trips += 1
        return refused


def _refused(exc: Exception) -> DispatchRefused:
    return DispatchRefused(f"Celery refused the task: {type(exc).__name__}: {exc}")
