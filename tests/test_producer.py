"""Producer SDK: idempotent config, ids, delivery failures surfaced (real librdkafka)."""

from __future__ import annotations

import pytest

from kafcel import ConfigError, DeliveryError, Producer, SchemaViolation
from kafcel.settings import Settings

pytestmark = pytest.mark.timeout(60)

UNREACHABLE = Settings(bootstrap_servers="127.0.0.1:1")


def test_acks_must_be_all() -> None:
    with pytest.raises(ConfigError, match="acks=all"):
        Producer(settings=UNREACHABLE, config={"acks": "1"})


def test_invalid_librdkafka_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid Kafka producer configuration"):
        Producer(settings=UNREACHABLE, config={"no.such.setting": "x"})


def test_submit_returns_the_given_or_a_fresh_id() -> None:
    producer = Producer(settings=UNREACHABLE, config={"message.timeout.ms": 300})
    assert producer.submit("a.task", 1, id="order-1") == "order-1"
    first, second = producer.submit("a.task"), producer.submit("a.task")
    assert first != second and len(first) == 36
    with pytest.raises(DeliveryError):
        producer.flush(5)


def test_undeliverable_records_raise_delivery_error_naming_the_count() -> None:
    producer = Producer(settings=UNREACHABLE, config={"message.timeout.ms": 300})
    for i in range(3):
        producer.submit("a.task", i, key=f"user-{i}")
    with pytest.raises(DeliveryError, match="3 task record") as info:
        producer.flush(5)
    assert len(info.value.failures) == 3


def test_context_manager_flushes_and_surfaces_failures() -> None:
    with (
        pytest.raises(DeliveryError),
        Producer(settings=UNREACHABLE, config={"message.timeout.ms": 300}) as producer,
    ):
        producer.submit("a.task", 1)


def test_bad_arguments_fail_at_submit_not_later() -> None:
    producer = Producer(settings=UNREACHABLE)
    with pytest.raises(SchemaViolation, match="priority"):
        producer.submit("a.task", priority=42)
    with pytest.raises(SchemaViolation, match="args"):
        producer.submit("a.task", object())
