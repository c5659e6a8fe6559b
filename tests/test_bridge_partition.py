"""A bridge cut off from Kafka, step by step on fakes (tests/bridge_harness.py): what
the bridge-partition chaos scenario does to it, in the order that matters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from kafcel.dev import DevStack, free_ports
from kafcel.settings import Settings

from .bridge_harness import TP, BridgeHarness, envelope

pytestmark = pytest.mark.timeout(60)

app = Celery("partition")


@app.task(name="partition.echo")
def echo(x: object) -> object:
    return x


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The once-guard's Redis only: no broker is needed on fakes.
    redis_port, *kafka_ports = free_ports(3)
    stack = DevStack(
        redis_port=redis_port,
        kafka_ports=kafka_ports,
        state_dir=Path(tmp_path_factory.mktemp("partition-redis")),
        services=("redis",),
    )
    stack.up()
    try:
        yield stack.redis_url
    finally:
        stack.down()


@pytest.fixture()
def harness(redis_url: str) -> BridgeHarness:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers="fake:9092",
        redis_url=redis_url,
        topic=f"cut-{run}",
        group_id=f"cut-{run}",
        session_timeout_s=6.0,
    )
    return BridgeHarness(app=app, settings=settings)


def _commits_of(h: BridgeHarness, since: int, tps: set[TP]) -> list[dict[TP, int]]:
    return [c for c in h.c.commits[since:] if tps & set(c)]


def test_partitions_taken_while_cut_off_are_not_committed_when_it_comes_back(
    harness: BridgeHarness,
) -> None:
    """The session lapses while the bridge cannot reach Kafka (librdkafka reports the
    partitions lost); another bridge takes them and commits further. When the cut heals,
    the outcomes of what this bridge had dispatched arrive: none of it may be committed,
    neither by the periodic nor by a synchronous commit, and a partition that comes back
    is committed only from what it re-reads past the other bridge's commit."""
    h = harness
    tp0, tp1 = (h.settings.topic, 0), (h.settings.topic, 1)
    for i in range(6):
        for tp in (tp0, tp1):
            h.kafka.append(tp, envelope("partition.echo", i), key=f"k{i}".encode())
    h.c.assign([tp0, tp1])
    h.turn()
    before_cut = list(h.publisher.sent)
    assert len(before_cut) == 12
    first = [next(item for item in before_cut if item.tp == tp) for tp in (tp0, tp1)]
    for item in first:
        h.answer(item)
    h.turn()
    h.bridge._commit(asynchronous=True)
    h.turn()  # its acknowledgement
    assert h.kafka.committed == {tp0: 1, tp1: 1}

    # Cut off: librdkafka's session timer lapses and it reports both partitions lost.
    h.c.lose([tp0, tp1])
    h.turn()
    assert h.bridge._tracker.in_flight() == 0
    since = len(h.c.commits)
    # Meanwhile bridge 0 re-read them from the commit and went further.
    h.kafka.committed.update({tp0: 4, tp1: 4})

    # Healed: every outcome of the dispatches made before the cut comes in now.
    for item in before_cut:
        if item not in first:
            h.answer(item)
    h.turn(3)
    h.bridge._commit(asynchronous=True)
    h.bridge._commit(asynchronous=False)
    h.turn()
    assert _commits_of(h, since, {tp0, tp1}) == []
    assert h.kafka.committed == {tp0: 4, tp1: 4}
    assert h.bridge._tracker.partitions() == []

    # The group gives tp1 back: read again from bridge 0's commit, under a new fence.
    h.c.assign([tp1])
    h.turn()
    again = [item for item in h.publisher.sent[12:] if item.tp == tp1]
    assert [item.offset for item in again] == [4, 5]
    assert all(item.fence != first[1].fence for item in again)
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed == {tp0: 4, tp1: 4}, "nothing settled yet: nothing committed"
    for item in again:
        h.answer(item)
    h.turn()
    h.bridge._commit(asynchronous=False)
    assert h.kafka.committed == {tp0: 4, tp1: 6}
    assert _commits_of(h, since, {tp0}) == []
