"""Records handed from the consuming thread to this worker's own Celery consumer.

confluent-kafka gives the event loop no file descriptor to wait on, and Celery's side
(strategies, semaphore, timer, pool) has no locks: it must run on the hub thread. So the
bridge loop runs in a thread of its own and hands each admitted record over as a kombu
``Message``; one reused ``hub.call_soon`` callback feeds them, in order, to the handler
Celery builds for broker messages (``Consumer.create_task_handler``). From there on the
record is an ordinary Celery task: events, ``inspect``, revoke, time limits, signals.

What Celery's acknowledgements mean here: a record settles when its final outcome
reaches the results topic, as on the bridge path, so ``basic_ack`` settles nothing (a
task that called ``self.retry`` is acknowledged too, and its record must stay open).
``basic_reject(requeue=True)`` (a worker process lost with ``reject_on_worker_lost``) is
a redelivery: the record is handed over again at once, marked redelivered.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable
from typing import Any

from kombu.message import Message

__all__ = ["HandOff"]

log = logging.getLogger("kafcel.worker")

Handler = Callable[[Message], None]


class _Channel:
    """What a kombu ``Message`` calls to acknowledge itself."""

    no_ack_consumers = None

    def __init__(self, handoff: HandOff) -> None:
        self._handoff = handoff

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self._handoff.done(delivery_tag)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        message = self._handoff.done(delivery_tag)
        if requeue and message is not None:
            self._handoff.redeliver(message)


class HandOff:
    """A thread-safe line from the consuming thread into the hub's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Message] = deque()
        self._hub: Any = None
        self._handler: Handler | None = None
        self._scheduled = False
        self._tags = itertools.count()
        # Handed over and not yet acknowledged or rejected, by delivery tag.
        self._open: dict[int, Message] = {}
        self.channel = _Channel(self)

    @property
    def attached(self) -> bool:
        return self._handler is not None

    def attach(self, hub: Any, handler: Handler) -> None:
        """Feed records to ``handler`` on ``hub`` (each time Celery's consumer starts)."""
        with self._lock:
            self._hub, self._handler = hub, handler
        self._wake()

    def detach(self) -> None:
        """Stop feeding (Celery's consumer stopped: broker reconnect or shutdown); what
        waits stays in line for the next :meth:`attach`."""
        with self._lock:
            self._hub = self._handler = None

    def put(self, messages: Iterable[Message]) -> None:
        with self._lock:
            for m in messages:
                # Open from here: requeue_dropped must never see one built, not put yet.
                self._open[m.delivery_tag] = m
                self._queue.append(m)
        self._wake()

    def message(
        self, *, body: bytes, headers: dict[str, Any], properties: dict[str, Any], queue: str
    ) -> Message:
        """A kombu message as the worker would have taken it from ``queue``."""
        tag = next(self._tags)
        message = Message(  # type: ignore[no-untyped-call]
            body=body,
            delivery_tag=tag,
            content_type="application/json",
            content_encoding="utf-8",
            # Task.retry routes the retry from here: to the queue the task would have
            # gone to through the broker.
            delivery_info={"exchange": "", "routing_key": queue, "redelivered": False},
            properties=properties,
            headers=headers,
            channel=self.channel,
        )
        return message

    def done(self, tag: int) -> Message | None:
        with self._lock:
            return self._open.pop(tag, None)

    def redeliver(self, message: Message) -> None:
        self.put([self._again(message)])

    def _again(self, message: Message) -> Message:
        """A fresh copy of ``message``, marked redelivered (a message acks only once)."""
        again = self.message(
            body=message.body,
            headers=message.headers,
            properties=message.properties,
            queue=message.delivery_info.get("routing_key", ""),
        )
        again.delivery_info["redelivered"] = True
        return again

    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._open)

    def requeue_dropped(self, live: Container[str]) -> int:
        """Hand over again, first in line, what Celery dropped: handed over, neither
        acknowledged nor rejected, and no longer among its requests (``live``: task ids).

        Celery drops its waiting and ETA requests when its broker connection restarts
        (``Consumer.on_close``, and the prefork pool's ``flush``), expecting the broker to
        deliver them again; Kafka records have no broker to do that. Called on the hub's
        thread, from the consumer step's ``stop``, right after ``on_close``."""
        with self._lock:
            waiting = {id(m) for m in self._queue}
            dropped = [
                m
                for m in self._open.values()
                if id(m) not in waiting and m.headers.get("id") not in live
            ]
            for m in dropped:
                del self._open[m.delivery_tag]
        again = [self._again(m) for m in dropped]
        with self._lock:
            # Ahead of anything newer: a key's next record is not admitted before this
            # one's outcome anyway, so line order is only fairness.
            for m in reversed(again):
                self._open[m.delivery_tag] = m
                self._queue.appendleft(m)
        self._wake()
        return len(again)

    def wake(self) -> None:
        """Have the hub's loop turn once (it checks Celery's shutdown flags each turn)."""
        hub = self._hub
        if hub is not None:
            hub.call_soon(lambda: None)

    def _wake(self) -> None:
        with self._lock:
            hub = self._hub
            if hub is None or self._scheduled or not self._queue:
                return
            self._scheduled = True
        # One callback drains everything queued: the hub's ready set keeps no order.
        hub.call_soon(self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
            handler = self._handler
            if handler is None:
                return
            batch = list(self._queue)
            self._queue.clear()
        for n, message in enumerate(batch):
            try:
                handler(message)
            except BaseException:
                # Celery handles a message's own errors; this is the loop going down
                # (shutdown): what was not handed over waits for the next attach.
                with self._lock:
                    self._queue.extendleft(reversed(batch[n + 1 :]))
                raise
