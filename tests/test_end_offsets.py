"""End offsets: Apache Kafka's high watermark is the end; Tansu's may be low by a batch,
so there the last batch is read."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from kafcel.dev import DevStack
from kafcel.kafka import admin
from kafcel.kafka.admin import end_offsets, ensure_topics
from kafcel.kafka.config import client_config

pytestmark = [pytest.mark.integration, pytest.mark.tansu, pytest.mark.timeout(60)]


class Spy:
    """A consumer that notes the partitions it is told to read."""

    def __init__(self, consumer: Consumer, reads: list[Any]) -> None:
        self._consumer = consumer
        self._reads = reads

    def assign(self, parts: list[Any]) -> None:
        self._reads.extend(parts)
        self._consumer.assign(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_the_end_is_the_watermark_on_kafka_and_read_on_tansu(
    stack: DevStack, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.bootstrap_servers, {topic: 2})
    # One batch of five: Tansu's watermark names the batch's first offset.
    producer = Producer({**client_config(stack.bootstrap_servers), "linger.ms": 50})
    for i in range(5):
        producer.produce(topic, value=b"x", key=str(i).encode(), partition=0)
    assert producer.flush(10) == 0
    reads: list[Any] = []
    opened = admin.open_consumer
    monkeypatch.setattr(admin, "open_consumer", lambda *a, **kw: Spy(opened(*a, **kw), reads))

    assert end_offsets(stack.bootstrap_servers, [(topic, 0), (topic, 1)]) == {
        (topic, 0): 5,
        (topic, 1): 0,
    }
    if broker == "kafka":
        assert reads == []  # Kafka's own high watermark: nothing read
    else:
        assert [(p.topic, p.partition) for p in reads] == [(topic, 0)]
