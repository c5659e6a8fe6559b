"""The bridge's consumer group protocol: classic (cooperative-sticky) or consumer (KIP-848).

``classic`` is the default because every Kafka-compatible broker speaks it, and Tansu and
clusters older than Apache Kafka 4.0 (MSK on 3.x, for one) speak only it. With it the
bridge sets its own session timeout, heartbeat and the cooperative-sticky assignor.

``consumer`` (Apache Kafka 4.0+) moves assignment to the broker: a member joining or
leaving moves only the partitions that change owner, with no group-wide barrier. Its
session and heartbeat belong to the group, not the member: librdkafka refuses
``session.timeout.ms``, ``heartbeat.interval.ms`` and ``partition.assignment.strategy``
with it. The bridge therefore sets the group's ``consumer.session.timeout.ms`` from
``session_timeout_s`` before it joins; a broker refuses a value outside
``group.consumer.min/max.session.timeout.ms`` (45 s to 60 s unless lowered), or a
principal without ALTER_CONFIGS on the group, and then the broker's timeout applies. The
heartbeat, which also paces how fast a reassignment reaches the members, stays the
broker's (``group.consumer.heartbeat.interval.ms``). Rebalance callbacks are incremental
under both protocols, so the bridge handles them alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from ..errors import ConfigError
from ..kafka.broker import TANSU, detect
from ..kafka.config import client_config
from ..settings import Settings

__all__ = ["CLASSIC", "CONSUMER", "finish_joining", "membership_config", "prepare_group"]

log = logging.getLogger("kafcel.bridge")

CLASSIC = "classic"
CONSUMER = "consumer"
_SESSION = "consumer.session.timeout.ms"
_ADMIN_TIMEOUT_S = 10.0


def membership_config(s: Settings) -> dict[str, Any]:
    """The consumer settings that depend on the group protocol."""
    if s.group_protocol == CONSUMER:
        return {"group.protocol": CONSUMER}
    return {
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": int(s.session_timeout_s * 1000),
        "heartbeat.interval.ms": max(int(s.session_timeout_s * 1000 / 10), 100),
    }


def prepare_group(s: Settings) -> None:
    """Before the bridge joins with the consumer protocol: refuse a broker without it
    (ConfigError), and give the group the bridge's session timeout where allowed."""
    if s.group_protocol != CONSUMER:
        return
    extra = s.librdkafka()
    kind = detect(s.bootstrap_servers, extra)
    if kind.name == TANSU:
        raise ConfigError(
            f"group_protocol=consumer (KIP-848) needs Apache Kafka 4.0 or newer, and "
            f"{s.bootstrap_servers} is Tansu, which speaks only the classic protocol: "
            "set KAFCEL_GROUP_PROTOCOL=classic"
        )
    session_ms = str(int(s.session_timeout_s * 1000))
    resource = ConfigResource(
        ResourceType.GROUP,
        s.group_id,
        incremental_configs=[
            ConfigEntry(_SESSION, session_ms, incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin = AdminClient(client_config(s.bootstrap_servers, extra))
    try:
        futures = admin.incremental_alter_configs([resource], request_timeout=_ADMIN_TIMEOUT_S)
        futures[resource].result()
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if hasattr(error, "str") else str(error)
        log.warning(
            "group %s: could not set %s=%s (%s); the broker's session timeout applies",
            s.group_id,
            _SESSION,
            session_ms,
            reason,
        )
        return
    log.info("group %s: %s=%s (consumer protocol)", s.group_id, _SESSION, session_ms)


def finish_joining(consumer: Consumer, joined: Callable[[], bool], *, timeout_s: float) -> None:
    """Before leaving the group, let a join in progress complete (``joined()`` turns true
    in the assign callback, which librdkafka runs inside consume()).

    Tansu never completes a rebalance whose joining member left before its JoinGroup was
    answered: every later member waits forever (docs/design-notes.md). A bridge stopped
    seconds after it started on Tansu therefore joins first, then leaves; Apache Kafka
    takes the leave as it comes.
    """
    deadline = time.monotonic() + timeout_s
    if not joined():
        log.info("waiting for the group join to complete before leaving")
    while not joined() and time.monotonic() < deadline:
        consumer.consume(1, timeout=0.02)
