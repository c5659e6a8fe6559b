"""Path B: the Celery worker consumes the task topic itself.

The worker runs the bridge's own loop (:class:`kafcel.bridge.Bridge`: validation and
DLQ, allow-list, ordering gate, offset tracker, fenced settles, byte budget, scheduled
tasks, redispatch, commits) in a thread of its own. Only the last step differs: an
admitted record is not published to Celery's broker but handed to this worker's own
Celery consumer (:mod:`kafcel.worker.handoff`), which runs it as if the broker had
delivered it. Records settle as on the bridge path, when their final outcome reaches the
results topic: a retry goes through Celery's broker to any worker, and its record stays
open until that attempt's outcome. So bridges and consuming workers may share one
topic and one group: each settles the partitions it owns, by the same rules.

While Celery's consumer is stopped (its broker is unreachable, or the worker shuts
down) nothing is handed over: records wait in the loop's held line, the partitions are
paused, and the consuming thread keeps polling, so the worker keeps its group
membership. Requests the prefork pool drops when Celery's broker connection restarts are
handed over again as it stops (:meth:`HandOff.requeue_dropped`); on the threads and solo
pools, which drop none but the ETA requests, those are left to the loop's redispatch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from celery.bootsteps import RUN
from celery.concurrency.base import BasePool
from celery.platforms import EX_FAILURE
from celery.worker import state as worker_state
from kombu.utils import json as kombu_json

from ..bridge import loop_for
from ..bridge.clients import BridgeClients
from ..bridge.publish import Publisher, _Prepared
from ..errors import ConfigError, KafcelError
from ..settings import Settings
from .handoff import HandOff

__all__ = ["CONSUME_FLAG", "LocalPublisher", "consume_step"]

log = logging.getLogger("kafcel.worker")

# The worker flag (also KAFCEL_WORKER_CONSUME=true).
CONSUME_FLAG = "--kafcel-consume"
# At shutdown the pool has drained: outcomes of what ran are on their way; records
# never started get none and are left to the partition's next owner.
_SHUTDOWN_DRAIN_S = 10.0


class _Detached(ConnectionError):
    """Celery's consumer is stopped: records wait, as for a broker that is down."""


class LocalPublisher(Publisher):
    """Hands admitted records to this worker instead of publishing them.

    Celery's message is built exactly as for the broker (:class:`Publisher`), so the
    worker sees the same headers, routing and time limits either way.
    """

    def __init__(self, *, app: Celery, handoff: HandOff) -> None:
        super().__init__(app=app)
        self._handoff = handoff
        # What Flower and the task events show as the message's origin.
        self._origin = f"kafcel-worker@{socket.gethostname()}:{os.getpid()}"

    def reachable(self, *, timeout_s: float) -> bool:
        return self._handoff.attached

    def _send(self, prepared: list[_Prepared]) -> dict[int, Any]:
        if not self._handoff.attached:
            raise _Detached("the worker's Celery consumer is stopped")
        messages = []
        for _, _, task_message, options in prepared:
            headers, properties, body, _ = task_message
            headers.update(options["headers"])
            queue = options["queue"]
            messages.append(
                self._handoff.message(
                    body=_json(body),
                    headers=headers,
                    properties={**properties, "priority": options.get("priority")},
                    queue=queue if isinstance(queue, str) else queue.name,
                )
            )
        self._handoff.put(messages)
        self.round_trips += 1
        return {}


def _json(body: Any) -> bytes:
    # kombu's own encoder, as its JSON serializer writes the message body.
    return str(kombu_json.dumps(body)).encode("utf-8")  # type: ignore[no-untyped-call]


class _Consuming:
    """The consuming thread of one worker process and its hand-off line."""

    def __init__(
        self, *, app: Celery, settings: Settings, flush_outcomes: Callable[[], None]
    ) -> None:
        self.handoff = HandOff()
        self._flush_outcomes = flush_outcomes
        self._join_s = settings.drain_timeout_s + 2 * settings.session_timeout_s + 30
        handoff = self.handoff
        self.bridge = loop_for(
            settings,
            app=app,
            clients=BridgeClients(publisher=lambda a: LocalPublisher(app=a, handoff=handoff)),
            role="worker",
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kafcel-consume", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self.bridge.run()
        except Exception as exc:
            # The worker must not run on without its records: a warm shutdown, with the
            # exit code of a failure (the event loop checks the flag between polls).
            trace = not isinstance(exc, KafcelError)
            log.critical("kafcel: the worker stops consuming Kafka: %s", exc, exc_info=trace)
            worker_state.should_stop = EX_FAILURE
            self.handoff.wake()

    def shutdown(self) -> None:
        thread = self._thread
        if thread is None:
            return
        # Called once the pool has drained: what will run here has run, and its
        # outcomes still lingering in this process (threads, solo pools) go out first.
        self._flush_outcomes()
        self.bridge.stop(ran_all=True)
        thread.join(self._join_s)
        if thread.is_alive():
            log.error("kafcel: the consuming thread did not stop within %.0fs", self._join_s)


def consume_step(
    settings: Settings | None, *, flush_outcomes: Callable[[], None]
) -> type[bootsteps.StartStopStep]:
    """The consumer bootstep that makes a worker consume the task topic, enabled by
    :data:`CONSUME_FLAG` or ``KAFCEL_WORKER_CONSUME``; ``flush_outcomes`` delivers the
    outcomes this process's producer still holds."""

    class KafkaConsume(bootsteps.StartStopStep):  # type: ignore[misc]
        """Consumes kafcel's task topic and runs its records in this worker."""

        # The Tasks step builds the strategies the task handler dispatches to.
        requires = ("celery.worker.consumer.tasks:Tasks",)
        label = "kafcel"

        def __init__(self, c: Any, kafcel_consume: bool = False, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            try:
                self._settings = settings or Settings.from_env()
            except ConfigError as exc:
                # As for a green pool (guard/lease.py): a line, not a traceback.
                raise SystemExit(f"kafcel: {exc}") from exc
            self.enabled = bool(kafcel_consume) or self._settings.worker_consume
            self._consuming: _Consuming | None = None
            self._discards = True

        def start(self, c: Any) -> None:
            if c.hub is None:
                # Green pools are refused before this (guard/lease.py): the transport.
                log.critical(
                    "kafcel: consuming Kafka in the worker needs Celery's event loop, which "
                    "this broker transport does not offer (Redis and RabbitMQ do)"
                )
                worker_state.should_stop = EX_FAILURE
                return
            if self._consuming is None:
                s = self._settings
                s = s.replace(drain_timeout_s=min(s.drain_timeout_s, _SHUTDOWN_DRAIN_S))
                self._consuming = _Consuming(app=c.app, settings=s, flush_outcomes=flush_outcomes)
            self._discards = _discards_at_reconnect(c.pool)
            # Each start: the strategies capture the event dispatcher and the timer.
            self._consuming.handoff.attach(c.hub, c.create_task_handler())
            # What waited while Celery's consumer was stopped goes now, not at the end
            # of the loop's backoff.
            self._consuming.bridge.wake_held()
            self._consuming.start()

        def stop(self, c: Any) -> None:
            # Also at every broker reconnect: stop handing over, and line up again what
            # Celery just dropped with its connection (on_close ran before this).
            if self._consuming is None:
                return
            handoff = self._consuming.handoff
            handoff.detach()
            if (
                c.blueprint.state != RUN
                or worker_state.should_stop is not None
                or worker_state.should_terminate is not None
            ):
                # Shutting down (a signal; `celery control shutdown` sets no flag, but
                # closes the blueprint, which a reconnect's restart leaves running): what
                # was not run is left to the partitions' next owner.
                return
            if not self._discards:
                return  # the pool runs its waiting jobs still (threads, solo)
            dropped = handoff.requeue_dropped(set(worker_state.requests))
            if dropped:
                log.warning(
                    "kafcel: %d record(s) Celery dropped with its broker connection are "
                    "handed over again when it is back",
                    dropped,
                )

        def shutdown(self, c: Any) -> None:
            if self._consuming is not None:
                self._consuming.handoff.detach()
                self._consuming.shutdown()
                self._consuming = None

    return KafkaConsume


def _discards_at_reconnect(pool: Any) -> bool:
    """Whether ``pool`` drops the jobs it has not started when Celery's broker connection
    restarts (prefork's ``flush``); the threads and solo pools keep and run them."""
    flush = getattr(pool, "flush", None)
    return getattr(flush, "__func__", None) is not BasePool.flush
