"""kafcel: Kafka-driven task scheduling for Celery."""

from .errors import (
    BrokerError,
    ConfigError,
    DeliveryError,
    DevStackError,
    EnvelopeError,
    InvalidEncoding,
    InvalidJson,
    KafcelError,
    KafkaError,
    RecordRejected,
    RecordTooLarge,
    SchemaViolation,
    TaskNotAllowed,
)
from .producer import Producer
from .protocol.envelope import Envelope, derive_task_id, task_id_for
from .protocol.outcome import Origin, Outcome
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "ConfigError",
    "DeliveryError",
    "DevStackError",
    "Envelope",
    "EnvelopeError",
    "InvalidEncoding",
    "InvalidJson",
    "KafcelError",
    "KafkaError",
    "Origin",
    "Outcome",
    "Producer",
    "RecordRejected",
    "RecordTooLarge",
    "SchemaViolation",
    "Settings",
    "TaskNotAllowed",
    "__version__",
    "derive_task_id",
    "task_id_for",
]
