"""The bridge's outcome reader does not starve on a results partition of many batches.

Tansu answers a fetch when ``fetch.wait.max.ms`` runs out and needs time in proportion
to the partition's batches to find the offset: past some tens of thousands of batches a
10 ms wait always comes back empty. The reader must notice and read on with a longer
wait. Apache Kafka answers as soon as records are there: the reader needs no fallback.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from kafcel.bridge.outcomes import OutcomeReader
from kafcel.dev import DevStack
from kafcel.kafka.admin import ensure_topics
from kafcel.kafka.broker import detect
from kafcel.kafka.config import client_config
from kafcel.protocol.outcome import SUCCESS, Outcome

from .conftest import wait_until

BATCHES = 80_000


@pytest.mark.tansu
@pytest.mark.timeout(240)
def test_the_reader_reads_on_past_a_partition_of_many_batches(stack: DevStack) -> None:
    topic = f"results-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.bootstrap_servers, {topic: 1})
    # One record per batch, as worker processes each writing their own outcomes make.
    filler = Producer(
        {**client_config(stack.bootstrap_servers), "batch.num.messages": 1, "linger.ms": 0}
    )
    for i in range(BATCHES):
        while True:
            try:
                filler.produce(topic, value=b"{}", key=str(i).encode())
                break
            except BufferError:
                filler.poll(0.05)
        filler.poll(0)
    assert filler.flush(60) == 0
    reader = OutcomeReader(
        config=client_config(stack.bootstrap_servers),
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        topic=topic,
        gap_wait_s=2.0,
        tansu=detect(stack.bootstrap_servers).needs_tansu_handling,
    )
    reader.follow([0])
    try:
        outcome = Outcome(task_id="t-1", task="shop.order", status=SUCCESS)
        filler.produce(topic, value=outcome.encode(), key=b"k")
        assert filler.flush(30) == 0

        def arrived() -> bool:
            # As the bridge's loop does: read, then let the reader judge its own progress.
            found = any(o.task_id == "t-1" for o in reader.read())
            reader.watch_starvation(expecting=True)
            return found

        wait_until(arrived, 120, "the outcome past 80,000 batches", 0.01)
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_the_reader_reads_only_the_partitions_it_follows(stack: DevStack) -> None:
    """A bridge owning task partitions 1 and 3 reads results partitions 1 and 3 only."""
    topic = f"results-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.bootstrap_servers, {topic: 4})
    reader = OutcomeReader(
        config=client_config(stack.bootstrap_servers),
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        topic=topic,
        gap_wait_s=2.0,
        tansu=detect(stack.bootstrap_servers).needs_tansu_handling,
    )
    writer = Producer(client_config(stack.bootstrap_servers))
    try:
        reader.follow([1, 3])
        for p in range(4):
            outcome = Outcome(task_id=f"t-{p}", task="shop.order", status=SUCCESS)
            writer.produce(topic, value=outcome.encode(), partition=p)
        assert writer.flush(30) == 0
        seen: set[str] = set()

        def both() -> bool:
            seen.update(o.task_id for o in reader.read())
            return {"t-1", "t-3"} <= seen

        wait_until(both, 30, "the followed partitions' outcomes", 0.02)
        reader.unfollow([1])
        outcome = Outcome(task_id="t-1b", task="shop.order", status=SUCCESS)
        writer.produce(topic, value=outcome.encode(), partition=1)
        outcome = Outcome(task_id="t-3b", task="shop.order", status=SUCCESS)
        writer.produce(topic, value=outcome.encode(), partition=3)
        assert writer.flush(30) == 0
        wait_until(both, 1, "nothing")
        wait_until(lambda: "t-3b" in seen or (both() and "t-3b" in seen), 30, "t-3b", 0.02)
        assert seen == {"t-1", "t-3", "t-3b"}
    finally:
        reader.close()
