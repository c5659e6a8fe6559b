"""Time ranges on Apache Kafka come from the broker's time index: ``kafcel replay
--from/--to`` and ``kafcel dlq list --since/--until`` read the records of the range and
no other, however many the topic holds before or after it (issue 12, point 4). On Tansu,
whose time lookup answers the first offset, the same ranges come out of a full scan."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from kafcel.dev import DevStack
from kafcel.kafka.admin import end_offsets, ensure_topics
from kafcel.ops.deadletters import DlqFilter, read_dead_letters
from kafcel.ops.replay import ScanStats
from kafcel.settings import Settings

from .conftest import base_env
from .test_cli import kafcel

pytestmark = [pytest.mark.integration, pytest.mark.tansu, pytest.mark.timeout(240)]

OLD = 100_000
PARTITIONS = 4
Position = tuple[int, int]


@dataclass(frozen=True)
class Filled:
    settings: Settings
    window: dict[str, set[Position]]  # per topic: the records stamped 5 minutes ago
    recent: dict[str, set[Position]]  # per topic: the records of the last minute

    def env(self, stack: DevStack) -> dict[str, str]:
        return {**base_env(stack), **self.settings.as_env()}


def _produce(
    producer: KafkaProducer, topic: str, task: str, n: int, stamp_ms: int | None
) -> list[Message]:
    done: list[Message] = []
    for i in range(n):
        value = json.dumps({"v": 1, "task": task, "args": [i]}).encode()
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key=f"{task}-{i}".encode(),
                    timestamp=stamp_ms or 0,
                    on_delivery=lambda err, msg: done.append(msg) if err is None else None,
                )
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    assert len(done) == n
    return done


@pytest.fixture(scope="module")
def filled(stack: DevStack) -> Iterator[Filled]:
    """Task topic and DLQ each: 100,000 records stamped ten minutes ago, 3 stamped five
    minutes ago, then 5 of now."""
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        topic=f"seek-{run}",
        group_id=f"g-{run}",
        partitions=PARTITIONS,
    )
    topics = (settings.topic, settings.dlq_topic)
    ensure_topics(stack.bootstrap_servers, dict.fromkeys(topics, PARTITIONS))
    producer = KafkaProducer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
        }
    )
    now_ms = int(time.time() * 1000)
    window: dict[str, set[Position]] = {}
    recent: dict[str, set[Position]] = {}
    for topic in topics:
        _produce(producer, topic, "tests.app.old", OLD, now_ms - 600_000)
        sent = _produce(producer, topic, "tests.app.window", 3, now_ms - 300_000)
        window[topic] = {(m.partition() or 0, m.offset() or 0) for m in sent}
        sent = _produce(producer, topic, "tests.app.recent", 5, None)  # stamped now
        recent[topic] = {(m.partition() or 0, m.offset() or 0) for m in sent}
    yield Filled(settings=settings, window=window, recent=recent)


def read_only(broker: str, n: int) -> Callable[[int], bool]:
    """What a scan for ``n`` records may read: those alone on Apache Kafka, everything
    before them too on Tansu (proof that its records are checked one by one)."""
    return (lambda read: read == n) if broker == "kafka" else (lambda read: read > OLD)


def _copies(settings: Settings, starts: dict[tuple[str, int], int], n: int) -> set[str]:
    """Where the replayed copies written after ``starts`` came from."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
    found: set[str] = set()
    deadline = time.monotonic() + 30
    try:
        while len(found) < n and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.2):
                err = msg.error()
                assert err is None or err.code() == KafkaError._PARTITION_EOF, err
                headers = dict(msg.headers() or [])
                if err is None and "kafcel-replay-of" in headers:
                    found.add(headers["kafcel-replay-of"].decode())
    finally:
        consumer.close()
    return found


def test_replay_from_a_minute_ago_reads_only_the_last_minute(
    stack: DevStack, broker: str, filled: Filled
) -> None:
    s = filled.settings
    before = end_offsets(s.bootstrap_servers, [(s.topic, p) for p in range(PARTITIONS)])
    out = kafcel("replay", "--from", "-1m", "--json", env=filled.env(stack))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["per_task"] == {"tests.app.recent": 5}
    assert report["submitted"] == 5
    # On Apache Kafka not one of the 100,003 older records was read.
    assert read_only(broker, 5)(report["read"]), report["read"]
    want = {f"{s.topic}:{p}:{o}" for p, o in filled.recent[s.topic]}
    assert _copies(s, before, 5) == want


def test_replay_of_a_past_window_stops_at_its_end(
    stack: DevStack, broker: str, filled: Filled
) -> None:
    out = kafcel(
        "replay", "--from", "-6m", "--to", "-4m", "--dry-run", "--json", env=filled.env(stack)
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["per_task"] == {"tests.app.window": 3}
    # Neither the older records nor the newer ones (nor the replayed copies) were read.
    assert read_only(broker, 3)(report["read"]), report["read"]


def test_dlq_list_since_a_minute_ago_reads_only_the_last_minute(
    broker: str, filled: Filled
) -> None:
    s = filled.settings
    stats = ScanStats()
    since = DlqFilter.parse(since="-1m")
    records = read_dead_letters(s, since, stats=stats)
    assert {(r.partition, r.offset) for r in records} == filled.recent[s.dlq_topic]
    assert {r.task for r in records} == {"tests.app.recent"}
    assert read_only(broker, 5)(stats.read), stats.read

    stats = ScanStats()
    window = DlqFilter.parse(since="-6m", until="-4m")
    records = read_dead_letters(s, window, stats=stats)
    assert {(r.partition, r.offset) for r in records} == filled.window[s.dlq_topic]
    assert read_only(broker, 3)(stats.read), stats.read
