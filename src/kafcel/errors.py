"""The one exception tree of kafcel.

```
KafcelError
├── ConfigError            a setting or argument is invalid
├── RecordRejected         a Kafka record that goes to the DLQ instead of Celery
│   ├── EnvelopeError      the record is not a valid envelope (field + reason)
│   │   ├── RecordTooLarge
│   │   ├── InvalidEncoding
│   │   ├── InvalidJson
│   │   └── SchemaViolation
│   ├── TaskNotAllowed     the task is not registered or not on the allow-list
│   └── DispatchRefused    Celery could not build a message from a valid envelope
├── KafkaError             the Kafka client failed (wraps confluent_kafka errors)
│   └── DeliveryError      records the producer could not deliver
├── BrokerError            the Celery broker refused or lost a message
│   └── DispatchHeld       not sent through no fault of the record: held, sent again
├── TaskLost               a task's worker died under it max_attempts times
└── DevStackError          the local stack (Tansu, Redis) could not start
```

Library exceptions are wrapped with ``raise ... from exc`` so the cause stays visible
in logs while callers only need to catch ``KafcelError``.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "DeliveryError",
    "DevStackError",
    "DispatchHeld",
    "DispatchRefused",
    "EnvelopeError",
    "InvalidEncoding",
    "InvalidJson",
    "KafcelError",
    "KafkaError",
    "NetLabError",
    "RecordRejected",
    "RecordTooLarge",
    "SchemaViolation",
    "TaskLost",
    "TaskNotAllowed",
]


class KafcelError(Exception):
    """Base of every error kafcel raises on purpose."""


class ConfigError(KafcelError):
    """A setting, environment variable or CLI argument is invalid."""


class RecordRejected(KafcelError):
    """A record that cannot become a Celery task; it goes to the DLQ with this reason."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class EnvelopeError(RecordRejected):
    """The record is not a valid v1 envelope."""


class RecordTooLarge(EnvelopeError):
    """The record value is above the size limit; checked before any parsing."""


class InvalidEncoding(EnvelopeError):
    """The record value is not UTF-8."""


class InvalidJson(EnvelopeError):
    """The record value is not a single strict JSON object."""


class SchemaViolation(EnvelopeError):
    """A field is missing, unknown, or has the wrong type or range."""


class TaskNotAllowed(RecordRejected):
    """The task name is not registered in the Celery app or not on the allow-list."""


class DispatchRefused(RecordRejected):
    """Celery refused a valid envelope (an option it cannot turn into a message)."""


class KafkaError(KafcelError):
    """The Kafka client failed (connection, topic, commit)."""


class DeliveryError(KafkaError):
    """The producer could not deliver some records; ``failures``: ``(task_id, error)``."""

    def __init__(self, message: str, *, failures: list[tuple[str, str]] | None = None) -> None:
        self.failures = failures or []
        super().__init__(message)


class BrokerError(KafcelError):
    """The Celery broker could not take a task message."""


class DispatchHeld(BrokerError):
    """Celery could not take a valid record for a reason that is not the record's: the
    deployment's routing (a queue the app does not declare), access to the broker, or the
    broker being down. The bridge keeps the record and sends it again later: dead-lettering
    it would drain a whole topic into the DLQ over one bad deploy."""

    def __init__(self, message: str, *, broker_down: bool = False) -> None:
        # Down: nothing is published until a probe reaches the broker again.
        self.broker_down = broker_down
        super().__init__(message)


class TaskLost(KafcelError):
    """A task's worker died under it (killed, crashed, ``os._exit``) too many times.

    Raised instead of running the task once more: the task is failed and dead-lettered,
    so a task that kills its own process cannot requeue itself forever.
    """


class DevStackError(KafcelError):
    """The local development stack could not be started or reached."""


class NetLabError(DevStackError):
    """A network namespace, veth pair, address or nft rule could not be set up."""
