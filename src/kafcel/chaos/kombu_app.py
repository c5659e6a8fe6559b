"""The Celery app the chaos suite's workers run for the kombu-kafka rows: the baseline.

Plain Celery with kombu's own Kafka transport (``confluentkafka://``) as its broker and
the suite's Redis (``KAFCEL_REDIS_URL``) as result backend; kafcel is not installed, so
nothing but Celery's own ``acks_late`` and ``task_reject_on_worker_lost`` stands between
a fault and a lost or repeated task. The task names and bodies are those of
:mod:`kafcel.chaos.app`, so the ledger counts both systems alike. Configuration is read
when Celery first needs it, never at import time.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from celery import Celery

from ..errors import ConfigError
from .tasks import register

__all__ = [
    "ASSIGNED_LOG",
    "BOOTSTRAP_ENV",
    "BROKER_ENV",
    "QUEUE",
    "QUEUE_ENV",
    "REDIS_ENV",
    "app",
    "transport_options",
]

BROKER_ENV = "KAFCEL_CHAOS_KOMBU_BROKER"
# kombu's URL names one broker; the whole cluster's list reaches librdkafka through this.
BOOTSTRAP_ENV = "KAFCEL_BOOTSTRAP_SERVERS"
REDIS_ENV = "KAFCEL_REDIS_URL"
QUEUE_ENV = "KAFCEL_CHAOS_QUEUE"
QUEUE = "kombu-chaos"
# Logged by the worker when its consumer holds partitions: Celery's "ready" comes before
# kombu has even subscribed. The consumer's own statistics say so on any broker, where
# DescribeGroups would not (Tansu lists no members).
ASSIGNED_LOG = "kombu-kafka consumer assigned"

log = logging.getLogger("kafcel.chaos.kombu")


class _AssignmentLog:
    """A librdkafka ``stats_cb`` that logs each change of the consumer's assignment."""

    def __init__(self) -> None:
        self.size = 0

    def __call__(self, stats: str) -> None:
        parsed = json.loads(stats)
        group = parsed.get("cgrp") or {}
        steady = group.get("join_state") == "steady"
        size = int(group.get("assignment_size", 0)) if steady else 0
        if size != self.size:
            self.size = size
            if size:
                log.warning("%s: %d partition(s)", ASSIGNED_LOG, size)
            else:
                log.warning("kombu-kafka consumer unassigned")


def _required(name: str) -> str:
    # No default: a fallback to the machine's own Redis would let a flush scenario hit it.
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def transport_options(bootstrap_servers: str | None = None) -> dict[str, Any]:
    """``broker_transport_options`` of kombu's confluentkafka transport, for any client;
    ``bootstrap_servers`` (every broker of the cluster) overrides the URL's one."""
    consumer: dict[str, Any] = {
        # A SIGKILLed worker never leaves its group: until the coordinator times it
        # out, the restarted worker is not assigned the partition (librdkafka: 45 s).
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "statistics.interval.ms": 500,
        "stats_cb": _AssignmentLog(),
    }
    options: dict[str, Any] = {
        # kombu's one partition per queue, spelt out. Its replication default is 1, which
        # a 3-node cluster would hold on one node only: -1 takes the broker's
        # default.replication.factor (Tansu accepts it too).
        "num_partitions": 1,
        "replication_factor": -1,
        # The transport polls each consumed topic in turn for up to this long, so an
        # idle one delays the next poll of the task topic by as much.
        "wait_time_seconds": 1,
        # kombu sleeps this long whenever a poll yields nothing, and it yields nothing
        # whenever the prefetch limit is reached: at its default of 1 s the worker runs
        # prefetch-count tasks a second (2/s measured), whatever the tasks cost.
        "polling_interval": 0.01,
        "kafka_consumer_config": consumer,
    }
    if bootstrap_servers:
        options["kafka_common_config"] = {"bootstrap.servers": bootstrap_servers}
    return options


class _LazyConfig:
    @property
    def broker_url(self) -> str:
        return _required(BROKER_ENV)

    @property
    def result_backend(self) -> str:
        return _required(REDIS_ENV)

    @property
    def task_default_queue(self) -> str:
        return os.environ.get(QUEUE_ENV, QUEUE)

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        return transport_options(os.environ.get(BOOTSTRAP_ENV, "").strip() or None)

    task_serializer = "json"
    result_serializer = "json"
    accept_content = ["json"]
    result_accept_content = ["json"]
    task_acks_late = True
    task_reject_on_worker_lost = True
    worker_prefetch_multiplier = 1
    result_expires = 3600
    broker_connection_retry_on_startup = True
    broker_connection_max_retries = None
    worker_hijack_root_logger = False


app = Celery("kafcel_chaos_kombu")
app.config_from_object(_LazyConfig())
register(app)
