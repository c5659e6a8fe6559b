"""Producer SDK: submit Celery tasks through Kafka.

```python
with kafcel.Producer(bootstrap_servers="kafka:9092") as producer:
    task_id = producer.submit("shop.process_order", args=[42], key=f"user-{user_id}")
    producer.delay("shop.send_receipt", 42, key="not an option: a task argument")
```

The Kafka producer is idempotent (``enable.idempotence``, ``acks=all``) and batches
(``linger.ms``); ``submit`` only queues the record, ``flush()`` waits for delivery and
raises :class:`DeliveryError` naming every record Kafka refused.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, cast

from confluent_kafka import KafkaException, Message
from confluent_kafka import Producer as KafkaProducer

from .errors import ConfigError, DeliveryError, KafkaError
from .kafka.config import client_config, explain
from .protocol.envelope import Envelope
from .settings import Settings

__all__ = ["Producer"]

_POLL_EVERY = 64

_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
}


class Producer:
    """Writes task envelopes to the task topic, keyed for per-key order."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        bootstrap_servers: str | None = None,
        topic: str | None = None,
        config: Mapping[str, Any] | None = None,
        queue_full_timeout_s: float = 30.0,
    ) -> None:
        if queue_full_timeout_s <= 0:
            raise ConfigError("queue_full_timeout_s must be positive")
        self._queue_full_timeout_s = queue_full_timeout_s
        base = settings or Settings.from_env()
        self.settings = base.replace(
            **{
                k: v
                for k, v in {"bootstrap_servers": bootstrap_servers, "topic": topic}.items()
                if v is not None
            }
        )
        conf: dict[str, Any] = client_config(self.settings.bootstrap_servers)
        conf.update(_DEFAULTS)
        conf.update(self.settings.librdkafka())
        conf.update(config or {})
        if str(conf.get("acks")) not in ("all", "-1"):
            raise ConfigError(
                "kafcel needs acks=all: a task acknowledged by one broker can be lost"
            )
        try:
            self._producer = KafkaProducer(conf)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer configuration: {exc}") from exc
        self._lock = threading.Lock()
        self._failures: list[tuple[str, str]] = []
        self._queued = 0
        self.delivered = 0

    def submit(
        self,
        task: str,
        /,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        key: str | bytes | None = None,
        id: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: datetime | float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        headers: Mapping[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> str:
        """Queue ``task(*args, **kwargs)`` with options; returns its Celery task id.

        Celery's ``apply_async(args, kwargs, **options)`` shape: the task's arguments and
        kafcel's options never share a namespace, so a task may take a keyword named
        ``key``, ``id``, ``queue``... Everything but ``task`` is keyword-only, so the
        old ``submit(task, *args, key=...)`` form fails loudly instead of being misread.
        """
        task_id = id or str(uuid.uuid4())
        envelope = Envelope(
            task=task,
            # The envelope turns a list into a tuple and refuses anything else (a str).
            args=cast(tuple[Any, ...], args),
            kwargs=dict(kwargs or {}),
            id=task_id,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            headers=dict(headers or {}),
            trace_id=trace_id,
            created_at=datetime.now().astimezone().isoformat(),
        )
        self.send(envelope, key=key)
        return task_id

    def delay(self, task: str, /, *args: Any, **kwargs: Any) -> str:
        """Queue ``task(*args, **kwargs)`` with no options (Celery's ``delay``): every
        argument goes to the task. For a key, id, countdown... use :meth:`submit`."""
        return self.submit(task, args=args, kwargs=kwargs)

    def send(self, envelope: Envelope, *, key: str | bytes | None = None) -> None:
        """Queue an already built envelope."""
        raw_key = key.encode() if isinstance(key, str) else key
        value = envelope.encode()
        deadline = time.monotonic() + self._queue_full_timeout_s
        while True:
            try:
                self._producer.produce(
                    self.settings.topic, value=value, key=raw_key, on_delivery=self._on_delivery
                )
                break
            except BufferError as exc:
                # Local queue full: serve delivery reports to make room, then retry; a
                # caller (a web request) must not wait forever for an unreachable Kafka.
                if time.monotonic() > deadline:
                    raise DeliveryError(
                        f"local queue still full after {self._queue_full_timeout_s:g}s: is "
                        f"Kafka reachable at {self.settings.bootstrap_servers}?"
                    ) from exc
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise KafkaError(f"could not queue task {envelope.task!r}: {exc}") from exc
        self._queued += 1
        if self._queued % _POLL_EVERY == 0:
            # Serve delivery reports now and then; each poll costs about as much as a
            # produce, and flush() serves the rest.
            self._producer.poll(0)

    def _on_delivery(self, err: Any, msg: Message) -> None:
        with self._lock:
            if err is not None:
                self._failures.append((_task_id(msg.value()), str(err)))
            else:
                self.delivered += 1

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is delivered; raise DeliveryError otherwise.

        Its ``failures`` are ``(task_id, error)`` pairs, the ids :meth:`submit` returned:
        those tasks were not acknowledged and may not run; submit them again if they must.
        A "still queued" error has no failures: flush again to wait on."""
        try:
            remaining = self._producer.flush(timeout_s)
        except (KafkaException, SystemError) as exc:
            # A fatal error of the producer (Kafka gives an idempotent producer no id when
            # its principal may write no topic), at times wrapped in a SystemError: a
            # delivery callback ran with it pending.
            cause = exc if isinstance(exc, KafkaException) else exc.__cause__
            if not isinstance(cause, KafkaException):
                raise
            error = cause.args[0] if cause.args else cause
            reason = error.str() if hasattr(error, "str") else str(error)
            raise DeliveryError(
                f"Kafka at {self.settings.bootstrap_servers} refused this producer: {reason}"
            ) from exc
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            first = failures[0][1]
            raise DeliveryError(
                f"{len(failures)} task record(s) were not delivered to Kafka "
                f"(first error: {first})",
                failures=failures,
            )
        if remaining:
            raise DeliveryError(
                f"{remaining} task record(s) still queued after {timeout_s:.0f}s: "
                f"is Kafka reachable at {self.settings.bootstrap_servers}?"
            )

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Raise :class:`KafkaError` naming the address unless Kafka answers a metadata
        request within ``timeout_s``: a one-off submit fails at once, not after the
        delivery timeout (a metadata request without a topic never auto-creates one)."""
        address = self.settings.bootstrap_servers
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            what = f"Kafka at {address} did not answer within {timeout_s:g}s"
            raise KafkaError(explain(self._producer, address, what, exc)) from exc

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Flush even on error: tasks already submitted must not be silently dropped.
        self.flush()


def _task_id(value: bytes | str | None) -> str:
    """The task id inside a record this producer wrote (an encoded envelope)."""
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return "?"
    return str(doc.get("id", "?")) if isinstance(doc, dict) else "?"
