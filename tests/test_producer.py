"""Producer SDK: idempotent config, ids, delivery failures surfaced (real librdkafka)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition

from kafcel import ConfigError, DeliveryError, Envelope, Producer, SchemaViolation
from kafcel.dev import DevStack
from kafcel.kafka.admin import ensure_topics
from kafcel.settings import Settings

from .conftest import wait_until

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
    assert producer.submit("a.task", args=[1], id="order-1") == "order-1"
    first, second = producer.submit("a.task"), producer.submit("a.task")
    assert first != second and len(first) == 36
    with pytest.raises(DeliveryError):
        producer.flush(5)


def test_undeliverable_records_raise_delivery_error_naming_the_count() -> None:
    producer = Producer(settings=UNREACHABLE, config={"message.timeout.ms": 300})
    for i in range(3):
        producer.submit("a.task", args=[i], key=f"user-{i}")
    with pytest.raises(DeliveryError, match="3 task record") as info:
        producer.flush(5)
    assert len(info.value.failures) == 3


def test_a_failed_submit_is_named_by_the_task_id_submit_returned() -> None:
    # The caller keeps the ids submit() returned; a failure must say which of them failed.
    producer = Producer(settings=UNREACHABLE, config={"message.timeout.ms": 300})
    ids = [producer.submit("a.task", args=[i], key="same-key") for i in range(3)]
    with pytest.raises(DeliveryError) as info:
        producer.flush(5)
    assert sorted(task_id for task_id, _ in info.value.failures) == sorted(ids)
    assert all("timed out" in error.lower() for _, error in info.value.failures)


def test_context_manager_flushes_and_surfaces_failures() -> None:
    with (
        pytest.raises(DeliveryError),
        Producer(settings=UNREACHABLE, config={"message.timeout.ms": 300}) as producer,
    ):
        producer.delay("a.task", 1)


def test_bad_arguments_fail_at_submit_not_later() -> None:
    producer = Producer(settings=UNREACHABLE)
    with pytest.raises(SchemaViolation, match="priority"):
        producer.submit("a.task", priority=42)
    with pytest.raises(SchemaViolation, match="args"):
        producer.submit("a.task", args=[object()])


def _written(stack: DevStack, send: Callable[[Producer], str]) -> tuple[str, Envelope, bytes]:
    """Submit through a real Kafka and read the record back as the bridge would."""
    settings = Settings(
        bootstrap_servers=stack.bootstrap_servers, topic=f"p-{uuid.uuid4().hex[:8]}"
    )
    ensure_topics(settings.bootstrap_servers, {settings.topic: 1})
    with Producer(settings=settings) as producer:
        task_id = send(producer)
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": uuid.uuid4().hex}
    )
    consumer.assign([TopicPartition(settings.topic, 0, 0)])
    try:
        msg = wait_until(lambda: consumer.poll(0.2), 30, "the submitted record")
    finally:
        consumer.close()
    return task_id, Envelope.decode(msg.value()), msg.key() or b""


@pytest.mark.integration
def test_task_arguments_named_like_options_reach_the_task(stack: DevStack) -> None:
    clashing = {"key": "k1", "id": 7, "queue": "q", "priority": 99, "headers": {"h": 1}}
    task_id, envelope, key = _written(
        stack,
        lambda p: p.submit("shop.ship", args=[1, "two"], kwargs=clashing, key="user-1", priority=3),
    )
    assert envelope.args == (1, "two") and dict(envelope.kwargs) == clashing
    assert key == b"user-1" and envelope.priority == 3 and envelope.id == task_id
    assert envelope.queue is None and envelope.headers == {}


@pytest.mark.integration
def test_delay_passes_every_argument_to_the_task(stack: DevStack) -> None:
    _, envelope, key = _written(
        stack, lambda p: p.delay("shop.ship", 1, key="k1", id=7, queue="q", task="t")
    )
    assert envelope.task == "shop.ship" and envelope.args == (1,)
    assert dict(envelope.kwargs) == {"key": "k1", "id": 7, "queue": "q", "task": "t"}
    assert key == b"" and envelope.queue is None


def test_the_old_positional_form_is_refused_not_misread() -> None:
    producer = Producer(settings=UNREACHABLE)
    with pytest.raises(TypeError):
        producer.submit("a.task", "name", 1, key="k")  # type: ignore[misc]


def test_a_fatal_producer_error_is_a_delivery_error_not_a_system_error() -> None:
    """librdkafka's fatal errors (an idempotent producer Kafka gives no id: a principal
    that may write no topic) surface from flush(), at times as a SystemError wrapping
    the KafkaException (a delivery callback ran with it pending). Pinned here with the
    flush that raises so; the real refusal is tests/test_security.py's."""
    from confluent_kafka import KafkaError as RdKafkaError
    from confluent_kafka import KafkaException

    producer = Producer(bootstrap_servers="127.0.0.1:1", topic="t")
    fatal = KafkaException(
        RdKafkaError(
            RdKafkaError.CLUSTER_AUTHORIZATION_FAILED, "Cluster authorization failed", fatal=True
        )
    )

    class Fatal:
        def flush(self, timeout: float) -> int:
            try:
                raise fatal
            except KafkaException as exc:
                raise SystemError("returned a result with an exception set") from exc

    real = producer._producer
    producer._producer = Fatal()  # type: ignore[assignment]
    try:
        with pytest.raises(DeliveryError, match="Cluster authorization failed"):
            producer.flush(1)
    finally:
        producer._producer = real
