"""Transactional producers on Apache Kafka: aborted tasks never run, committed ones all
do, the commit reaches the end past the transaction markers, and the markers' offset
gaps hold no partition (the gap wait is Tansu handling only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer

from kafcel import Envelope
from kafcel.bridge.presence import read_presence

from .conftest import Pipeline, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Ledger = tuple[str, "redis.Redis[bytes]"]

# Committed and aborted in turn, ending on an aborted one: the end of every partition is
# then an abort marker behind records that must never run.
TRANSACTIONS = [True, False, True, False, False, True, True, False]
PER_TRANSACTION = 12
KEYS = 10


def envelope(name: str, item: int) -> bytes:
    """A task record as kafcel's Producer.submit() writes it."""
    return Envelope(
        task="tests.app.record",
        args=(name, item),
        id=str(uuid.uuid4()),
        created_at=datetime.now().astimezone().isoformat(),
    ).encode()


def bridge_stats(client: redis.Redis[bytes], group: str) -> dict[str, Any]:
    (bridge,) = read_presence(client, group)
    stats: dict[str, Any] = bridge["stats"]
    return stats


def test_aborted_tasks_never_run_and_markers_hold_nothing(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    settings = pipeline.settings
    assert settings.gap_wait_s >= 1.0  # the bridge's default: a wait would show
    pipeline.start_bridge()
    producer = KafkaProducer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "transactional.id": f"tx-{settings.topic}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    committed: set[str] = set()
    aborted: set[str] = set()
    item = 0
    for commit in TRANSACTIONS:
        producer.begin_transaction()
        for _ in range(PER_TRANSACTION):
            producer.produce(
                settings.topic, envelope(name, item), key=f"user-{item % KEYS}".encode()
            )
            (committed if commit else aborted).add(str(item))
            item += 1
        # Aborted records must reach the log, not be purged from the producer's queue.
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    def effects() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(f"{name}:effects").items()}

    wait_until(lambda: set(effects()) >= committed, 60, "every committed task run")
    # The commit reaches the end: past the markers and the aborted records behind the
    # last committed one, so the group has no lag left.
    wait_until(pipeline.fully_committed, 30, "offsets committed to the end")
    assert effects() == dict.fromkeys(committed, 1)
    assert not aborted & {k.decode() for k in client.hkeys(f"{name}:attempts")}

    # The bridge's own counters, as it publishes them (every 2 s).
    n = len(committed)
    stats = wait_until(
        lambda: (s := bridge_stats(client, settings.group_id))["settled"] >= n and s,
        30,
        "the bridge's report of every settled record",
    )
    assert stats["consumed"] == n
    assert stats["gaps"] > 0  # the markers' gaps were there, and passed
    assert stats["gap_wait_s"] == pytest.approx(0.0, abs=0.01)
    assert stats["gaps_reseeked"] == 0
