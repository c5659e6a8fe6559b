"""Configuration of every Kafka client kafcel creates: the base settings, the durable
producer's, the bridge consumers' fetch settings."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError

__all__ = ["KAFKA_LOG", "client_config", "explain", "fetch_config", "producer_config"]


# librdkafka's own log lines go through Python logging, not straight to stderr, so a CLI
# error stays one line and the bridge's log stays in one format.
KAFKA_LOG = logging.getLogger("kafcel.kafka")


def fetch_config(wait_ms: int, *, tansu: bool, batch: bool = False) -> dict[str, Any]:
    """Fetch settings of the bridge's consumers, to go before the user's own settings.

    Apache Kafka answers a fetch as soon as a record arrives: ``fetch.min.bytes=1`` with
    librdkafka's usual 500 ms wait, which only bounds an idle consumer's requests.
    Tansu (``tansu``: the broker needs its handling) answers only when
    ``fetch.wait.max.ms`` runs out, even when records arrive meanwhile (500 ms meant
    150 ms of median latency), so the wait is ``wait_ms``; a high ``fetch.min.bytes``
    makes every fetch last that long, so a busy consumer sends a bounded number of
    fetches a second instead of one per few records (the broker's CPU). Either way 8 MB
    of prefetch bounds memory (librdkafka's default is 64 MB).

    ``batch``: fetches wait ``wait_ms`` on either broker, for readers whose records
    start nothing at once (outcomes: they settle records, and only a key's next record
    under ``ordering=key`` waits on them): fewer requests for the broker to answer, but
    an idle reader asks every ``wait_ms``.
    """
    if not tansu and not batch:
        return {"fetch.wait.max.ms": 500, "fetch.min.bytes": 1, "queued.max.messages.kbytes": 8192}
    return {
        "fetch.wait.max.ms": wait_ms,
        "fetch.min.bytes": 1 << 20,
        "queued.max.messages.kbytes": 8192,
    }


def client_config(bootstrap_servers: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Base config of every Kafka client kafcel creates."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "logger": KAFKA_LOG,
        "error_cb": _remember(bootstrap_servers),
        **(extra or {}),
    }


# Why the brokers at an address refused a client, as librdkafka last said, and when: a
# request that then fails says only "transport failure", which names neither a wrong
# password nor an untrusted certificate.
_refusals: dict[str, tuple[float, str]] = {}
# An older refusal says nothing of a failure now (a long-running dashboard's).
_REFUSAL_FRESH_S = 60.0
_refusals_lock = threading.Lock()
_REFUSED = frozenset(
    {
        RdKafkaError._AUTHENTICATION,
        RdKafkaError._SSL,
        RdKafkaError.TOPIC_AUTHORIZATION_FAILED,
        RdKafkaError.GROUP_AUTHORIZATION_FAILED,
        RdKafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def _remember(bootstrap_servers: str) -> Callable[[Any], None]:
    def error_cb(error: Any) -> None:
        text = str(error.str())
        # What librdkafka logs itself when no error callback is set.
        KAFKA_LOG.error("%s", text)
        if error.code() in _REFUSED or "SSL handshake failed" in text:
            with _refusals_lock:
                _refusals[bootstrap_servers] = (time.monotonic(), text)

    return error_cb


def explain(client: Any, address: str, what: str, exc: Exception) -> str:
    """``what`` failed with ``exc`` on a client of ``address``: the refusal librdkafka
    reported (a wrong password, an untrusted certificate, a missing ACL) when there is a
    recent one, in librdkafka's words (no secret in them), else ``exc``."""
    client.poll(0)  # serves the error callbacks that say why
    with _refusals_lock:
        at, why = _refusals.get(address, (0.0, ""))
    if why and time.monotonic() - at < _REFUSAL_FRESH_S:
        return f"{what}: Kafka at {address} refused this client: {why}"
    return f"{what}: {exc}"


def producer_config(
    bootstrap_servers: str, extra: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A producer whose writes survive a broker's loss (idempotent, ``acks=all``); these
    settings win over the user's own, which a DLQ or replay write must not weaken."""
    return {
        **client_config(bootstrap_servers, extra),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
