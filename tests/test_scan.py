"""Reading a topic range (DLQ and replay scans) on librdkafka's mock cluster, the second
Kafka implementation: its transaction markers and exact watermarks differ from Tansu's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Producer as KafkaProducer

from kafcel.ops.replay import read_one, scan_topic
from kafcel.settings import Settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def mock_cluster() -> Iterator[str]:
    holder = KafkaProducer({"test.mock.num.brokers": 3})
    metadata = holder.list_topics(timeout=10)
    yield ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    holder.flush(1)


def test_a_scan_ends_when_the_last_offset_is_a_transaction_marker(mock_cluster: str) -> None:
    settings = Settings(bootstrap_servers=mock_cluster, topic="scanned")
    plain = KafkaProducer({"bootstrap.servers": mock_cluster})
    for i in range(3):
        plain.produce("scanned", f"plain-{i}".encode(), partition=0)
    plain.flush(10)
    txn = KafkaProducer({"bootstrap.servers": mock_cluster, "transactional.id": "scan-test"})
    txn.init_transactions(10)
    txn.begin_transaction()
    for i in range(2):
        txn.produce("scanned", f"txn-{i}".encode(), partition=0)
    txn.commit_transaction(10)
    # The partition ends with the commit marker, an offset no consumer ever receives.
    values = [m.value() for m in scan_topic(settings, "scanned")]
    assert values == [b"plain-0", b"plain-1", b"plain-2", b"txn-0", b"txn-1"]
    assert read_one(settings, "scanned", 0, 1).value() == b"plain-1"  # type: ignore[union-attr]
    assert read_one(settings, "scanned", 0, 99) is None
