"""What the broker is: Apache Kafka (or a broker that behaves like it), or Tansu.

kafcel keeps a handful of workarounds for Tansu (docs/design-notes.md, "Running against
Tansu"): a gap wait on out-of-order visibility, a short fetch wait, a high-watermark
correction, a scan instead of a time seek. None of them may cost anything on Apache
Kafka, and none should depend on a setting a user must know, so each is chosen by what
the broker says it is:

- DescribeCluster's cluster id: Tansu names its cluster ``tansu...`` unless told
  otherwise;
- otherwise DescribeConfigs of a broker: Apache Kafka, Confluent, MSK and Redpanda answer
  (an authorization error is an answer too); Tansu never does, and a broker that stays
  silent gets the Tansu handling, which is correct everywhere, only slower.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from .admin import client_config

__all__ = ["APACHE_KAFKA", "TANSU", "BrokerKind", "detect"]

APACHE_KAFKA = "apache-kafka"
TANSU = "tansu"
_UNKNOWN = "kafka-compatible"
_PROBE_S = 5.0


@dataclass(frozen=True)
class BrokerKind:
    """What :func:`detect` found: ``name`` and the cluster id it answered with."""

    name: str
    cluster_id: str = ""

    @property
    def needs_tansu_handling(self) -> bool:
        """True unless the broker answered like Apache Kafka: the safe choice when unsure."""
        return self.name != APACHE_KAFKA


_cache: dict[str, BrokerKind] = {}
_lock = threading.Lock()


def detect(
    bootstrap_servers: str,
    extra: Mapping[str, str] | None = None,
    *,
    timeout_s: float = _PROBE_S,
) -> BrokerKind:
    """Ask the cluster what it is; cached per bootstrap address for the process.

    A cluster that cannot be reached is not cached: the caller's own clients will report
    that, and the next call asks again.
    """
    with _lock:
        known = _cache.get(bootstrap_servers)
    if known is not None:
        return known
    admin = AdminClient(client_config(bootstrap_servers, extra))
    try:
        cluster = admin.describe_cluster(request_timeout=timeout_s).result()
    except KafkaException:
        return BrokerKind(_UNKNOWN)
    cluster_id = str(cluster.cluster_id or "")
    if TANSU in cluster_id.lower():
        kind = BrokerKind(TANSU, cluster_id)
    else:
        node = next(iter(cluster.nodes), None)
        kind = BrokerKind(_UNKNOWN, cluster_id)
        if node is not None:
            resource = ConfigResource(ResourceType.BROKER, str(node.id))
            future = admin.describe_configs([resource], request_timeout=timeout_s)[resource]
            try:
                future.result()
                kind = BrokerKind(APACHE_KAFKA, cluster_id)
            except KafkaException as exc:
                # Denied by an ACL is still an answer; a timeout is not.
                if "TIMED_OUT" not in str(exc.args[0].name() if exc.args else exc):
                    kind = BrokerKind(APACHE_KAFKA, cluster_id)
    with _lock:
        _cache[bootstrap_servers] = kind
    return kind
