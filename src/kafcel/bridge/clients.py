"""How the bridge opens the clients it talks through: Kafka, Celery's broker.

The loop never constructs a client itself, so the same loop runs in production on real
clients and, in the tests, in-process on fakes whose every delivery, rebalance and
broker answer the test orders (``tests/bridge_harness.py``): interleavings such as a DLQ
acknowledgement arriving after its partition moved are then tested exactly, not by
chance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from confluent_kafka import Consumer, Producer

from ..errors import ConfigError
from ..kafka.admin import ensure_topics
from ..kafka.broker import BrokerKind, detect
from ..kafka.config import client_config, fetch_config
from ..settings import Settings
from .group import membership_config, prepare_group
from .outcomes import OutcomeReader
from .publish import Publisher
from .schedule import ScheduledReader

__all__ = ["BridgeClients", "consumer_config"]

# Task records should start soon: on Tansu, 200 fetches a second at most (admin.fetch_config).
_FETCH_WAIT_MS = 5


def consumer_config(s: Settings, on_commit: Callable[..., None], *, tansu: bool) -> dict[str, Any]:
    """The bridge's group consumer of the task topic (``tansu``: the broker needs the
    Tansu handling)."""
    conf: dict[str, Any] = {
        **fetch_config(_FETCH_WAIT_MS, tansu=tansu),
        **client_config(s.bootstrap_servers, s.librdkafka()),
        "group.id": s.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **membership_config(s),
        "on_commit": on_commit,
        # Over the user's settings: a record of an aborted transaction must never run.
        "isolation.level": "read_committed",
    }
    if s.group_instance_id:
        conf["group.instance.id"] = s.group_instance_id
    return conf


def _broker(s: Settings) -> BrokerKind:
    return detect(s.bootstrap_servers, s.librdkafka())


def _topics(s: Settings) -> None:
    """Create what is missing; the results, DLQ and scheduled topics get the task topic's
    partition count, and the results and scheduled topics must have at least as many
    (outcomes and parked tasks go to the partition numbered like their request's)."""
    extra = s.librdkafka()
    tasks = ensure_topics(s.bootstrap_servers, {s.topic: s.partitions}, extra=extra)[s.topic]
    known = ensure_topics(
        s.bootstrap_servers,
        {s.results_topic: tasks, s.dlq_topic: tasks, s.scheduled_topic: tasks},
        extra=extra,
    )
    for topic in (s.results_topic, s.scheduled_topic):
        _co_partitioned(s, topic, known[topic], tasks)


def _co_partitioned(s: Settings, topic: str, partitions: int, tasks: int) -> None:
    if partitions < tasks:
        raise ConfigError(
            f"the topic {topic!r} has {partitions} partitions and the task topic "
            f"{s.topic!r} {tasks}: outcomes and parked tasks go to the partition numbered "
            "like their request's, so give it at least as many "
            f"(kafka-topics.sh --alter --topic {topic} --partitions {tasks})"
        )


def _outcomes(config: dict[str, Any], s: Settings, kind: BrokerKind) -> OutcomeReader:
    return OutcomeReader(
        config=config,
        group_id=s.group_id,
        topic=s.results_topic,
        gap_wait_s=s.gap_wait_s,
        tansu=kind.needs_tansu_handling,
        batch_ms=s.outcome_batch_ms,
    )


def _scheduled(config: dict[str, Any], s: Settings, kind: BrokerKind) -> ScheduledReader:
    return ScheduledReader(
        config=config,
        group_id=s.group_id,
        topic=s.scheduled_topic,
        lead_s=(s.schedule_after_s or 60.0) / 2,
        # Well within the done markers' lifetime and any sane retention (schedule.py).
        repark_after_s=min(s.once_done_ttl_s / 4, 24 * 3600.0),
        gap_wait_s=s.gap_wait_s,
        tansu=kind.needs_tansu_handling,
    )


def _publisher(app: Celery) -> Publisher:
    return Publisher(app=app)


@dataclass(frozen=True, kw_only=True)
class BridgeClients:
    """Factories of the bridge's clients; the defaults are the real ones."""

    ensure_topics: Callable[[Settings], None] = _topics
    prepare_group: Callable[[Settings], None] = prepare_group
    # What the broker is: the Tansu handling is chosen by it (kafka/broker.py).
    broker: Callable[[Settings], BrokerKind] = _broker
    consumer: Callable[[dict[str, Any]], Consumer] = Consumer
    producer: Callable[[dict[str, Any]], Producer] = Producer
    outcomes: Callable[[dict[str, Any], Settings, BrokerKind], OutcomeReader] = _outcomes
    publisher: Callable[[Celery], Publisher] = _publisher
    scheduled: Callable[[dict[str, Any], Settings, BrokerKind], ScheduledReader] = _scheduled
