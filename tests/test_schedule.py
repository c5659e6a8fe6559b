"""Scheduled tasks wait in the scheduled topic, not in the bridge (bridge/schedule.py).

On the real stack: a backlog due tomorrow neither pauses the bridge nor holds other
records' commits nor reads as a stall; tasks due soon start at their eta, across a bridge
restart, in their key's order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from kafcel import Producer
from kafcel.kafka.admin import committed_offsets

from .conftest import Pipeline, wait_until
from .test_operate import effects, status

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Ledger = tuple[str, "redis.Redis[bytes]"]
DAY_S = 24 * 3600


def bridge_stats(pipeline: Pipeline) -> dict[str, Any]:
    _, report = status(pipeline)
    (bridge,) = report["bridges"]
    return dict(bridge["stats"])


def test_a_backlog_due_tomorrow_blocks_nothing(pipeline: Pipeline, ledger: Ledger) -> None:
    name, client = ledger
    n = 10_000
    pipeline.start_bridge()
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            producer.submit(
                "tests.app.record", args=[name, f"later-{i}"], key=f"k{i % 50}", countdown=DAY_S
            )
        for i in range(50):
            producer.submit("tests.app.record", args=[name, f"now-{i}"], key=f"k{i}")
    wait_until(
        lambda: sum(1 for k in effects(client, name) if k.startswith("now")) == 50,
        120,
        "the tasks due now to run, past 10,000 due tomorrow on their keys",
    )
    wait_until(pipeline.fully_committed, 120, "every task record committed, parked ones too")
    stats = wait_until(
        lambda: (s := bridge_stats(pipeline))["scheduled"] == n and s,
        120,
        "the bridge to hold the 10,000 parked tasks in its index",
    )
    assert not stats["paused"] and stats["in_flight"] == 0 and stats["parked"] == n
    code, report = status(pipeline, "--check", lag_window_s=3.0)
    assert code == 0 and report["evaluation"]["status"] == "OK"
    parked = sum(pipeline.ends(pipeline.settings.scheduled_topic).values())
    assert parked == n
    assert not any(k.startswith("later") for k in effects(client, name))


def test_tasks_start_at_their_eta_across_a_restart_in_key_order(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    soon = {"schedule_after_s": 4.0}
    bridge = pipeline.start_bridge(**soon)
    submitted = time.time()
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.stamp", args=[name, "a"], key="k", countdown=12)
        producer.submit("tests.app.stamp", args=[name, "b"], key="k", countdown=12)
        producer.submit("tests.app.stamp", args=[name, "c"], key="k")  # due now: runs now
        producer.submit("tests.app.stamp", args=[name, "d"], key="other", countdown=14)
    wait_until(lambda: effects(client, name).get("c") == 1, 30, "the task due now")
    wait_until(
        lambda: sum(pipeline.ends(pipeline.settings.scheduled_topic).values()) == 3,
        30,
        "three tasks parked",
    )
    bridge.stop(timeout_s=30)  # parked, not yet due: the next bridge finds them in Kafka
    # Parking switched off meanwhile: what was parked before still runs.
    pipeline.start_bridge(schedule_after_s=0.0)
    wait_until(lambda: len(effects(client, name)) == 4, 60, "the scheduled tasks to run")
    started = {k.decode(): float(v) for k, v in client.hgetall(f"{name}:started").items()}
    for item, countdown in (("a", 12), ("b", 12), ("d", 14)):
        late = started[item] - (submitted + countdown)
        assert -0.5 < late < 1.0, f"{item} started {late:+.2f}s from its eta"
    runs = [e.decode().split(":")[0] for e in client.lrange(f"{name}:log", 0, -1)]
    assert runs.index("c") < runs.index("a") < runs.index("b"), runs
    assert set(effects(client, name).values()) == {1}
    wait_until(pipeline.fully_committed, 60, "everything committed")
    scheduled = pipeline.tps(pipeline.settings.scheduled_topic)
    ends = pipeline.ends(pipeline.settings.scheduled_topic)

    def parked_committed() -> bool:
        done = committed_offsets(
            pipeline.settings.bootstrap_servers, pipeline.settings.group_id, scheduled
        )
        return all((done.get(tp) or 0) >= end for tp, end in ends.items())

    wait_until(parked_committed, 60, "the scheduled partitions committed past the parked tasks")


def test_a_task_parked_long_is_parked_anew_so_the_commit_moves_on(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    """A task due far ahead must not hold its scheduled partition's commit behind tasks
    that ran since: read again from that commit (a restart, a rebalance) once their done
    markers expired, those would run again. After a quarter of the markers' lifetime it
    is parked anew at the end, and the old copy settles."""
    name, client = ledger
    pipeline.start_bridge(schedule_after_s=2.0, once_done_ttl_s=12.0)  # anew after 3 s
    submitted = time.time()
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.stamp", args=[name, "far"], key="k", countdown=30)
        producer.submit("tests.app.stamp", args=[name, "near"], key="k", countdown=4)
    wait_until(lambda: effects(client, name).get("near") == 1, 30, "the near task")
    topic = pipeline.settings.scheduled_topic
    (tp,) = [tp for tp, end in pipeline.ends(topic).items() if end]

    def committed_past_both() -> bool:
        done = committed_offsets(
            pipeline.settings.bootstrap_servers, pipeline.settings.group_id, [tp]
        )
        return (done.get(tp) or 0) >= 2

    wait_until(committed_past_both, 40, "the far task parked anew and the commit past both")
    assert "far" not in effects(client, name), "parked anew, not run early"
    wait_until(lambda: effects(client, name).get("far") == 1, 40, "the far task at its eta")
    started = float(client.hget(f"{name}:started", "far") or 0)
    assert -0.5 < started - (submitted + 30) < 1.0
    assert effects(client, name) == {"near": 1, "far": 1}
