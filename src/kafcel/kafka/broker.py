"""What the broker is: Apache Kafka (or a broker that behaves like it), or Tansu.

kafcel keeps a handful of workarounds for Tansu (docs/design-notes.md, "Running against
Tansu"): a gap wait on out-of-order visibility, a short fetch wait, a high-watermark
correction, a scan instead of a time seek. None of them may cost anything on Apache
Kafka, and none should depend on a setting a user must know, so each is chosen by what
the broker says it is:

- DescribeCluster's cluster id: Tansu names its cluster ``tansu...`` unless told
  otherwise;
- otherwise DescribeConfigs of a broker: Apache Kafka, Confluent, MSK and Redpanda answer
  (a refusal by an ACL is an answer too); Tansu never does. A broker that stays silent or
  answers with any other error gets the Tansu handling, which is correct everywhere,
  only slower; that answer is not cached, so the next client asks again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from .config import client_config

__all__ = ["APACHE_KAFKA", "TANSU", "BrokerKind", "detect"]

APACHE_KAFKA = "apache-kafka"
TANSU = "tansu"
_UNKNOWN = "kafka-compatible"
_PROBE_S = 5.0
# DescribeConfigs refused by an ACL: the broker implements it, as Apache Kafka does.
_DENIED = frozenset({"CLUSTER_AUTHORIZATION_FAILED", "TOPIC_AUTHORIZATION_FAILED"})


@dataclass(frozen=True)
class BrokerKind:
    """What :func:`detect` found: ``name`` and the cluster id it answered with."""

    name: str
    cluster_id: str = ""

    @property
    def needs_tansu_handling(self) -> bool:
        """True unless the broker answered like Apache Kafka: the safe choice when unsure."""
        return self.name != APACHE_KAFKA


_cache: dict[tuple[str, tuple[tuple[str, str], ...]], BrokerKind] = {}
_lock = threading.Lock()


def detect(
    bootstrap_servers: str,
    extra: Mapping[str, str] | None = None,
    *,
    timeout_s: float = _PROBE_S,
    admin: Callable[[dict[str, Any]], Any] = AdminClient,
) -> BrokerKind:
    """Ask the cluster what it is; an Apache Kafka or Tansu answer is cached per
    bootstrap address and client settings for the process.

    An unreachable cluster, or one whose answer says neither, is not cached: the caller's
    own clients will report the outage, and the next call asks again.
    """
    key = (bootstrap_servers, tuple(sorted((extra or {}).items())))
    with _lock:
        known = _cache.get(key)
    if known is not None:
        return known
    client = admin(client_config(bootstrap_servers, extra))
    try:
        cluster = client.describe_cluster(request_timeout=timeout_s).result()
    except KafkaException:
        return BrokerKind(_UNKNOWN)
    cluster_id = str(cluster.cluster_id or "")
    if TANSU in cluster_id.lower():
        kind = BrokerKind(TANSU, cluster_id)
    elif _answers_describe_configs(client, cluster.nodes, timeout_s):
        kind = BrokerKind(APACHE_KAFKA, cluster_id)
    else:
        return BrokerKind(_UNKNOWN, cluster_id)
    with _lock:
        _cache[key] = kind
    return kind


def _answers_describe_configs(client: Any, nodes: list[Any], timeout_s: float) -> bool:
    node = next(iter(nodes), None)
    if node is None:
        return False
    resource = ConfigResource(ResourceType.BROKER, str(node.id))
    future = client.describe_configs([resource], request_timeout=timeout_s)[resource]
    try:
        future.result()
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        return getattr(error, "name", lambda: "")() in _DENIED
    return True
