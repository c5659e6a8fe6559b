"""Publishing a batch to RabbitMQ with publisher confirms.

Celery's own publish on RabbitMQ is fire-and-forget: a message the broker then refuses (a
queue at its length limit with ``reject-publish``, an internal error) or cannot route (its
queue deleted, or lost with a non-durable queue's node) is gone without a word, and the
bridge would count its record as dispatched and wait for an outcome that never comes.
Here a batch goes out on a connection and channel of the bridge's own, in confirm mode,
every message ``mandatory``, and the batch then waits once for RabbitMQ's answers: a
message counts as dispatched only when RabbitMQ has confirmed it without returning it.

The bridge's channel is its own (never one of the app's pooled producers), so the
delivery tags RabbitMQ confirms are exactly the publishes counted here: a task's own
retries (on the threads pool, in the same process) publish on other channels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.messaging import Producer

from ..errors import DispatchHeld

__all__ = ["ConfirmedChannel"]

log = logging.getLogger("kafcel.bridge")

# (index in the batch, task name, Celery's message, send_task_message options)
Prepared = tuple[int, str, Any, dict[str, Any]]
SendOne = Callable[[Any, str, Any, dict[str, Any]], None]


class ConfirmedChannel:
    """The bridge's own channel to RabbitMQ, in confirm mode; opened on first use and
    again after any failure."""

    def __init__(self, *, app: Celery, confirm_timeout_s: float) -> None:
        if not isinstance(app, Celery):
            raise TypeError("app must be a Celery app")
        if not 0 < confirm_timeout_s < 3600:
            raise ValueError(f"confirm_timeout_s must be in (0, 3600), got {confirm_timeout_s!r}")
        self._app = app
        self.confirm_timeout_s = float(confirm_timeout_s)
        self._conn: Any = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._sent = 0  # publishes on this channel since confirm.select: the last tag
        self._index = -1  # the batch index being published now
        self._waiting: dict[int, int] = {}  # delivery tag -> batch index
        self._task_index: dict[str, int] = {}  # task id -> batch index (returns)
        self._refused: dict[int, DispatchHeld] = {}
        self._lost = False  # the connection broke since connection_lost() last said so

    def send(
        self, prepared: list[Prepared], send_one: SendOne, on_error: Callable[[int, Exception], Any]
    ) -> dict[int, Any]:
        """Publish ``prepared`` in order and wait for RabbitMQ's answers; return the
        batch index of every message not dispatched with its reason. Connection errors
        raise (the broker is down: the caller holds the whole batch); any other error of
        one message is ``on_error``'s to judge."""
        self._waiting.clear()
        self._task_index.clear()
        self._refused.clear()
        failed: dict[int, Any] = {}
        try:
            for index, name, message, options in prepared:
                producer = self._open()
                self._index = index
                self._task_index[message[0]["id"]] = index
                try:
                    send_one(producer, name, message, options)
                except Exception as exc:
                    channel_error = isinstance(exc, self._conn.channel_errors)
                    failed[index] = on_error(index, exc)
                    if channel_error or not self._channel.is_open:
                        # A channel error (a queue declared with other arguments, an
                        # exchange that is not there) closes the channel, and py-amqp
                        # reopens it outside confirm mode: what it had not confirmed yet
                        # is unknown, and the rest go on a new connection.
                        self._abandon("the channel closed before RabbitMQ confirmed")
                        self._reset()
            if not self._wait():
                # No answer in time: whatever the connection's state, the next batch
                # starts on a new one (a silent network cut shows only so).
                self._reset(lost=True)
        except BaseException as exc:
            self._reset(lost=self._is_connection_error(exc))
            raise
        finally:
            self._index = -1
        for tag, index in self._waiting.items():
            failed.setdefault(index, _unconfirmed(self.confirm_timeout_s, tag))
        for index, reason in self._refused.items():
            failed.setdefault(index, reason)
        return failed

    def close(self) -> None:
        self._reset()

    def connection_lost(self) -> bool:
        """True once after the bridge's connection to RabbitMQ broke: a node restart (or
        a cut) since the last call. Looks at the socket without waiting."""
        if self._conn is not None:
            try:
                self._conn.drain_events(timeout=0)
            except TimeoutError:
                pass  # nothing to read: the connection is there
            except Exception as exc:
                self._reset(lost=self._is_connection_error(exc))
        lost, self._lost = self._lost, False
        return lost

    def _is_connection_error(self, exc: BaseException) -> bool:
        return self._conn is not None and isinstance(exc, self._conn.connection_errors)

    def _open(self) -> Producer:
        if self._producer is not None and self._channel.is_open:
            return self._producer
        self._reset()
        # No heartbeats: the bridge may publish nothing for minutes, and a connection the
        # broker closed for a missed heartbeat would read as the broker being down. Socket
        # time-outs instead: a declare or a write to a blocked or half-open connection
        # fails (the broker counts as down) rather than stopping the bridge's one thread.
        timeouts = {"read_timeout": self.confirm_timeout_s, "write_timeout": self.confirm_timeout_s}
        conn = self._app.connection_for_write(heartbeat=0, transport_options=timeouts)
        try:
            conn.ensure_connection(max_retries=1, interval_start=0)
            channel = conn.channel()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            channel.confirm_select()
            publish = channel.basic_publish

            def counted(*args: Any, **kwargs: Any) -> Any:
                # Every message mandatory: an unroutable one comes back instead of
                # vanishing. Counted here, where the broker numbers it.
                kwargs["mandatory"] = True
                self._sent += 1
                self._waiting[self._sent] = self._index
                return publish(*args, **kwargs)

            channel.basic_publish = counted
        except BaseException:
            conn.release()
            raise
        self._conn, self._channel, self._sent = conn, channel, 0
        self._producer = Producer(channel, auto_declare=False)  # type: ignore[no-untyped-call]
        return self._producer

    def _wait(self) -> bool:
        """Wait for every answer; False when some did not come in time."""
        deadline = time.monotonic() + self.confirm_timeout_s
        while self._waiting and self._channel is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._conn.drain_events(timeout=left)
            except TimeoutError:
                return False
            except self._conn.channel_errors as exc:
                # Closed for a message it refused outright (an exchange not there).
                self._abandon(f"RabbitMQ closed the channel ({exc})")
                self._reset()
        return True

    def _settle(self, tag: int, multiple: bool, reason: DispatchHeld | None) -> None:
        tags = [t for t in self._waiting if t <= tag] if multiple else [tag]
        for t in tags:
            index = self._waiting.pop(t, None)
            if index is not None and reason is not None:
                self._refused.setdefault(index, reason)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, DispatchHeld("RabbitMQ did not confirm the task (nack)"))

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        task_id = (getattr(message, "properties", None) or {}).get("correlation_id")
        index = self._task_index.get(str(task_id))
        if index is None:
            return
        self._refused[index] = DispatchHeld(
            f"RabbitMQ returned the task: no queue took it (exchange {exchange!r}, "
            f"routing key {routing_key!r}: {exc})"
        )
        # What Celery remembers as declared may be gone (deleted, or lost with its node):
        # the next publish declares its queue again.
        self._conn.declared_entities.clear()

    def _abandon(self, why: str) -> None:
        for index in self._waiting.values():
            self._refused.setdefault(index, DispatchHeld(f"{why}: sent again"))
        self._waiting.clear()

    def _reset(self, *, lost: bool = False) -> None:
        self._lost = self._lost or lost
        conn, self._conn, self._channel, self._producer = self._conn, None, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception as exc:  # closing a dead connection: nothing left to lose
                log.debug("closing the RabbitMQ connection: %s", exc)


def _unconfirmed(timeout_s: float, tag: int) -> DispatchHeld:
    return DispatchHeld(f"RabbitMQ did not confirm the task within {timeout_s:g}s (tag {tag})")
