"""Hand a batch of records to Celery's broker in one round trip.

Every task stays one ordinary Celery message (protocol 2, built by Celery's own
``as_task_v2`` and routed by its router, ``task_routes`` included) that workers, Flower and
``celery inspect`` see as such. What ``send_task`` adds and the bridge leaves out is a
broker round trip per task, and the result backend's ``on_task_call``, which on Redis
subscribes to every task's result channel: the bridge never waits on a result, so those
subscriptions would only pile up.

Two ways to the broker:

* **Redis** (the common case): the batch's messages are written by one pipelined LPUSH
  request on kombu's own client, in the exact format kombu's Redis transport writes
  (``tests/test_publish.py`` compares the two), to the list kombu would choose (priority
  steps, key prefix). Taken only when nothing in the process listens to the publish
  signals and the queue is a plain direct one; otherwise:
* **RabbitMQ**: Celery's ``send_task_message`` for each task on a channel of the
  bridge's own in confirm mode, then one wait for RabbitMQ's confirms
  (:mod:`.confirms`): only what it confirmed counts as dispatched;
* **any other transport**: Celery's ``send_task_message`` for each task inside kombu's
  ``Producer.batch()``, which pipelines on Redis (kombu 5.7) and publishes at once
  elsewhere.

On every path but the Redis pipeline the publish signals fire as with ``send_task``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Celery, signals
from celery.exceptions import QueueNotFound
from celery.utils.saferepr import saferepr
from kombu import exceptions
from kombu.entity import PERSISTENT_DELIVERY_MODE as PERSISTENT
from kombu.entity import maybe_delivery_mode

from ..errors import DispatchHeld, DispatchRefused
from ..protocol.headers import CELERY_HEADER as HEADER
from .confirms import ConfirmedChannel
from .dispatch import Dispatch

__all__ = ["Publisher", "batch_length"]

# Building a batch's messages holds several copies of each payload at once (JSON body,
# base64, the wire message): batches of large records are cut at this many bytes.
_BATCH_BYTES = 4 << 20


def batch_length(items: Sequence[Dispatch]) -> int:
    """How many of ``items`` to send in one round trip: at least one."""
    total = 0
    for n, item in enumerate(items):
        total += len(item.msg.value() or b"")
        if total > _BATCH_BYTES and n > 0:
            return n
    return len(items)


# (index in the batch, task name, Celery's message, send_task_message options)
_Prepared = tuple[int, str, Any, dict[str, Any]]
# How long a batch waits for RabbitMQ's confirms before what is unconfirmed is sent again.
CONFIRM_TIMEOUT_S = 10.0

log = logging.getLogger("kafcel.bridge")


class Publisher:
    """Sends the bridge's admitted records to Celery, a batch per broker round trip."""

    def __init__(self, *, app: Celery, confirm_timeout_s: float = CONFIRM_TIMEOUT_S) -> None:
        if not isinstance(app, Celery):
            raise TypeError("app must be a Celery app")
        self.app = app
        self.round_trips = 0
        conf = app.conf
        with app.connection_for_write() as conn:
            redis = conn.transport.driver_type == "redis"
            rabbitmq = conn.transport.driver_type == "amqp"
            # Connection errors only: a channel error (WRONGTYPE, NOPERM) is about one
            # list, and a KeyError is a bug; retrying either would stall the partition.
            transport_errors = tuple(
                e for e in conn.connection_errors if not issubclass(e, LookupError)
            )
        # What means "the broker is not reachable now" rather than "this record is bad".
        self._retryable: tuple[type[BaseException], ...] = (
            exceptions.OperationalError,
            # kombu 5.7's publish batch reports a failed pipeline so.
            getattr(exceptions, "BatchPublishError", exceptions.OperationalError),
            ConnectionError,
            TimeoutError,
            *transport_errors,
        )
        self._confirmed = (
            ConfirmedChannel(app=app, confirm_timeout_s=confirm_timeout_s) if rabbitmq else None
        )
        self._volatile = rabbitmq and _volatile(app)
        # What would make kombu's publish do more than one LPUSH per message.
        self._redis = (
            redis
            and int(conf.task_protocol) == 2
            and not conf.task_send_sent_event
            and not conf.task_compression
        )
        self._origin = f"kafcel-bridge@{socket.gethostname()}:{os.getpid()}"
        # Read once: app.conf lookups cost microseconds each, per task.
        # app.amqp is a locked cached_property: fetched once, not per task.
        self._amqp = app.amqp
        self._router = self._amqp.router
        self._default_queue = self._amqp.queues[conf.task_default_queue]
        self._reply_to = app.thread_oid
        self._sent_event = bool(conf.task_send_sent_event)
        self._repr_max = (
            int(self._amqp.argsrepr_maxsize),
            int(self._amqp.kwargsrepr_maxsize),
            int(conf.task_repr_maxlevels),
        )
        self._delivery_mode = conf.task_default_delivery_mode
        self._exec_options: dict[str, dict[str, Any]] = {}
        self._reserved = _reserved_headers(self._amqp)

    def publish(self, items: Sequence[Dispatch]) -> list[DispatchRefused | DispatchHeld | None]:
        """Send ``items`` in order, in one round trip; per item None once Celery has it,
        :class:`DispatchRefused` when the record itself cannot become a task (it goes to
        the DLQ), :class:`DispatchHeld` when Celery could not take it through no fault of
        the record (routing, broker access, the broker down): the bridge keeps it and
        sends it again. Never waits for a broker that is down: the bridge's one thread
        must keep polling Kafka and reading outcomes meanwhile.
        """
        answers: list[DispatchRefused | DispatchHeld | None] = [None] * len(items)
        prepared: list[_Prepared] = []
        for index, item in enumerate(items):
            try:
                prepared.append((index, item.envelope.task, *self._build(item)))
            except QueueNotFound as exc:
                # A queue the record asked for is the record's; one that routing chose
                # (task_routes, the default queue) is the deployment's.
                explicit = item.envelope.queue is not None
                answers[index] = _refused(exc) if explicit else _held(exc)
            except Exception as exc:
                # Not the broker's state but this record's (Celery cannot build it).
                answers[index] = _refused(exc)
        if not prepared:
            return answers
        try:
            failed = self._send(prepared)
        except self._retryable as exc:
            down = DispatchHeld(f"Celery broker unavailable: {exc}", broker_down=True)
            for index, *_ in prepared:
                answers[index] = down
            return answers
        for index, reason in failed.items():
            answers[index] = reason
        return answers

    def close(self) -> None:
        """Close the connection of RabbitMQ's publisher confirms, if one is open."""
        if self._confirmed is not None:
            self._confirmed.close()

    def messages_maybe_lost(self) -> bool:
        """True once after Celery's broker may have lost messages it had accepted: the
        connection to RabbitMQ broke (a node restart, most likely) while the app has queues
        or messages a restart does not keep. Redis's losses are found by the once-guard."""
        if self._confirmed is None or not self._confirmed.connection_lost():
            return False
        return self._volatile

    def reachable(self, *, timeout_s: float) -> bool:
        """Whether the broker answers now; a down one is found within ``timeout_s``
        (kombu's own connect retries take seconds, too long for the bridge's loop)."""
        try:
            with self.app.connection_for_write(connect_timeout=timeout_s) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)
        except Exception:
            return False
        return True

    def _task_options(self, name: str) -> dict[str, Any]:
        """The registered task's own options (queue, priority, time limits...), which
        ``send_task`` applies as defaults; empty for a task this app does not know."""
        cached = self._exec_options.get(name)
        if cached is None:
            task = self.app._tasks.get(name)
            found = task._get_exec_options() if hasattr(task, "_get_exec_options") else {}
            cached = self._exec_options[name] = {
                k: v for k, v in (found or {}).items() if v is not None and k != "expires"
            }
        return cached

    def _build(self, item: Dispatch) -> tuple[Any, dict[str, Any]]:
        """Celery's message for ``item`` and the options ``send_task_message`` takes."""
        envelope = item.payload()
        args, kwargs = list(envelope.args), dict(envelope.kwargs)
        origin = item.origin
        if envelope.headers:  # most envelopes have none: no copy of the origin then
            origin = dataclasses.replace(origin, headers=dict(envelope.headers))
        options: dict[str, Any] = dict(self._task_options(envelope.task))
        # The envelope's own expiry (or none) wins over the task's, as an explicit
        # send_task(expires=...) does; time limits go into the message headers.
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        headers = {k: v for k, v in envelope.headers.items() if k not in self._reserved}
        headers[HEADER] = origin.to_header()
        options["headers"] = headers
        if item.queue is not None:
            options["queue"] = item.queue
        if envelope.priority is not None:
            options["priority"] = envelope.priority
        if self._router.routes or "queue" in options:
            # task_routes and the default queue, exactly as send_task resolves them.
            options = self._router.route(options, envelope.task, args, kwargs)
        else:
            options["queue"] = self._default_queue
        args_max, kwargs_max, levels = self._repr_max
        message = self._amqp.create_task_message(
            item.task_id,
            envelope.task,
            args,
            kwargs,
            eta=item.eta,
            expires=item.expires,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            reply_to=self._reply_to,
            create_sent_event=self._sent_event,
            # None, as send_task sends it: the worker applies the task's own setting.
            ignore_result=None,
            origin=self._origin,
            # Celery shows no args as "()" (its `args or ()`).
            argsrepr=_display(args or (), args_max, levels),
            kwargsrepr=_display(kwargs, kwargs_max, levels),
        )
        if item.expires is not None:
            # As send_task does: the broker may drop the message once it has expired.
            left_s = (item.expires - datetime.now(UTC)).total_seconds()
            options["expiration"] = max(left_s, 0.0)
        options["serializer"] = "json"
        return message, options

    def _send(self, prepared: list[_Prepared]) -> dict[int, DispatchRefused | DispatchHeld]:
        """One batch on one connection; raises a retryable error if the broker failed."""
        if self._confirmed is not None:
            failed = self._confirmed.send(prepared, self._send_one, self._judge)
            self.round_trips += 1
            return failed
        refused: dict[int, DispatchRefused | DispatchHeld] = {}
        with self.app.producer_or_acquire() as producer:
            channel = producer.channel
            fast = self._redis and not _publish_listeners()
            if fast and all(_plain_direct(p[3], channel) for p in prepared):
                try:
                    refused = _lpush_all(channel, prepared, self._delivery_mode)
                except self._retryable:
                    raise
                except Exception as exc:
                    # Something this path did not foresee: Celery's own publish below
                    # refuses the records it cannot send one by one.
                    log.warning("batched LPUSH failed (%s); publishing through Celery", exc)
                else:
                    self.round_trips += 1
                    return refused
            batch = getattr(producer, "batch", None)  # kombu >= 5.7
            scope = batch(max_size=8 * len(prepared) + 8) if batch else contextlib.nullcontext()
            with scope:
                for index, name, message, options in prepared:
                    try:
                        self._send_one(producer, name, message, options)
                    except Exception as exc:
                        refused[index] = self._judge(index, exc)
        self.round_trips += 1
        return refused

    def _send_one(self, producer: Any, name: str, message: Any, options: dict[str, Any]) -> None:
        self._amqp.send_task_message(producer, name, message, retry=False, **options)

    def _judge(self, index: int, exc: Exception) -> DispatchRefused | DispatchHeld:
        """What one message's failed publish means; the broker being down raises."""
        if isinstance(exc, self._retryable):
            raise exc
        if isinstance(exc, exceptions.EncodeError | exceptions.ContentDisallowed):
            return _refused(exc)  # this record's content
        # An exchange, a queue or a permission the broker refuses: the deployment's, not
        # the record's.
        return _held(exc)


# What a worker's Request and task.request read besides the protocol headers: a message
# header of one of these names would change how Celery runs the task.
_REQUEST_FIELDS = frozenset(
    {"properties", "reply_to", "correlation_id", "hostname", "delivery_info", "headers"}
    | {"loglevel", "logfile", "is_eager", "args", "kwargs", "callbacks", "errbacks"}
    | {"chain", "chord", "children", "called_directly", "utc", "taskset"}
)


def _reserved_headers(amqp: Any) -> frozenset[str]:
    """Header names an envelope's ``headers`` may not set on the Celery message: the
    protocol headers Celery writes (id, task, retries, eta... read from the installed
    Celery), every field of the task's request, and kafcel's own ``kafcel``. Envelope
    headers become message headers so that tracing (``traceparent``) reaches
    ``task.request``; these names stay Celery's and kafcel's."""
    from celery.app.task import Context

    protocol = amqp.as_task_v2("probe", "probe").headers
    fields = {name for name in vars(Context) if not name.startswith("_")}
    return frozenset({*protocol, *fields, *_REQUEST_FIELDS, HEADER})


def _display(value: list[Any] | tuple[()] | dict[str, Any], max_size: int, max_levels: int) -> str:
    """Celery's ``saferepr`` of args/kwargs (the argsrepr Flower shows), at ``repr`` cost
    for the usual small, shallow JSON values, which both print alike."""
    if _depth(value) < max_levels:
        text = repr(value)
        if len(text) < max_size:
            return text
    return str(saferepr(value, max_size, maxlevels=max_levels))


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _volatile(app: Celery) -> bool:
    """Whether a RabbitMQ restart can drop messages it confirmed: a queue of the app's
    that is not durable (or is auto-deleted, exclusive), or messages sent transient.
    Queues made on the fly for a route (task_create_missing_queues) are durable."""
    if maybe_delivery_mode(app.conf.task_default_delivery_mode) != PERSISTENT:  # type: ignore[no-untyped-call]
        return True
    return any(not q.durable or q.auto_delete or q.exclusive for q in app.amqp.queues.values())


def _publish_listeners() -> bool:
    """Whether anything (tracing, Sentry) hooks the publish: then Celery must publish."""
    return bool(
        signals.before_task_publish.receivers
        or signals.after_task_publish.receivers
        or signals.task_sent.receivers
    )


def _plain_direct(options: dict[str, Any], channel: Any) -> bool:
    """A direct queue routed by name (the anon exchange), with nothing kombu's ``_put``
    would do besides one LPUSH: no queue expiry to refresh, no compression."""
    queue = options.get("queue")
    if queue is None or isinstance(queue, str):
        return False
    if options.get("exchange") is not None or options.get("compression"):
        return False
    arguments = queue.queue_arguments or {}
    if queue.expires is not None or "x-expires" in arguments:
        return False
    return bool(queue.exchange.type == "direct" and queue.name not in (channel._expires or {}))


def _lpush_all(
    channel: Any, prepared: list[_Prepared], default_delivery_mode: Any
) -> dict[int, DispatchRefused | DispatchHeld]:
    """What kombu's Redis ``_put`` writes for each message, in one pipelined request.

    One LPUSH per list with all of its messages, in order: ``LPUSH q a b`` leaves the
    list as ``LPUSH q a; LPUSH q b`` would, and the worker pops ``a`` first. A list
    Redis refuses (WRONGTYPE, NOPERM: a key or an ACL of the deployment) holds its own
    records only.
    """
    # list key -> (index in the batch, wire message), in batch order
    lists: dict[str, list[tuple[int, str]]] = {}
    for index, _, message, options in prepared:
        headers, properties, body, _ = message
        headers.update(options["headers"])
        queue = options["queue"]
        # As Celery's send_task_message, then kombu's publish, resolve it.
        mode = queue.exchange.delivery_mode or default_delivery_mode
        delivery_mode = maybe_delivery_mode(mode)  # type: ignore[no-untyped-call]
        # kombu's own clamp of the priority to its steps, as its _put reads it.
        priority = channel._get_message_priority(
            {"properties": {"priority": options.get("priority") or channel.default_priority}},
            reverse=False,
        )
        payload = json.dumps(body).encode("utf-8")
        wire = {
            "body": base64.b64encode(payload).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                **properties,
                "delivery_mode": delivery_mode,
                "delivery_info": {"exchange": "", "routing_key": queue.name},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        if "expiration" in options:  # kombu's Producer.publish: a TTL in milliseconds
            wire["properties"]["expiration"] = str(int(options["expiration"] * 1000))
        key = channel._q_for_pri(queue.name, priority)
        lists.setdefault(key, []).append((index, json.dumps(wire)))
    pipe = channel.client.pipeline(transaction=False)
    for key, members in lists.items():
        pipe.lpush(key, *(payload for _, payload in members))
    held: dict[int, DispatchRefused | DispatchHeld] = {}
    # Connection errors still raise; a command's own error comes back as its result.
    for members, result in zip(lists.values(), pipe.execute(raise_on_error=False), strict=True):
        if isinstance(result, Exception):
            for index, _ in members:
                held[index] = _held(result)
    return held


def _refused(exc: Exception) -> DispatchRefused:
    return DispatchRefused(f"Celery refused the task: {type(exc).__name__}: {exc}")


def _held(exc: Exception) -> DispatchHeld:
    return DispatchHeld(f"Celery could not take the task: {type(exc).__name__}: {exc}")
