"""Bridge lifecycle on the real stack: commit on revoke, SIGTERM drain, backpressure."""

from __future__ import annotations

import signal

import pytest
import redis

from kafcel import Producer

from .conftest import Pipeline, wait_until
from .test_pipeline import counts, outcomes_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Ledger = tuple[str, "redis.Redis[bytes]"]


def test_revoked_partitions_are_committed_synchronously(pipeline: Pipeline, ledger: Ledger) -> None:
    name, client = ledger
    # No periodic commit: whatever is committed below was committed by the revoke.
    first = pipeline.start_bridge(commit_interval_s=3600)
    n = 80
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            producer.submit("tests.app.record", args=[name, i], key=f"k{i}")
    outcomes_for(pipeline, n)
    first.wait_for_log(f"idle: all {n} fetched record(s) settled", timeout_s=30)
    assert all(c is None for c in pipeline.committed().values())

    second = pipeline.start_bridge(commit_interval_s=3600, wait_assigned=False)
    second.wait_for_log("assigned:", timeout_s=60)
    first.wait_for_log("revoked:", timeout_s=60)
    ends = pipeline.ends()
    committed = pipeline.committed()
    moved = [tp for tp, c in committed.items() if c is not None]
    assert moved, "the revoke committed nothing"
    assert all(committed[tp] == ends[tp] for tp in moved)
    # The new owner starts from the commit: nothing runs twice.
    assert first.alive() and second.alive()
    assert set(counts(client, f"{name}:effects").values()) == {1}

    # Shutdown commits the partitions the first bridge kept.
    assert first.stop(timeout_s=30) == 0
    wait_until(pipeline.fully_committed, 60, "every partition committed")
    assert set(counts(client, f"{name}:effects").values()) == {1}


def test_sigterm_drains_in_flight_tasks_commits_and_exits_0(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    bridge = pipeline.start_bridge(commit_interval_s=3600)
    n = 8
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            producer.submit("tests.app.slow", args=[name, i, 1.0], key=f"k{i}")
    wait_until(lambda: counts(client, f"{name}:started"), 60, "tasks to start")
    bridge.signal(signal.SIGTERM)
    assert bridge.proc is not None
    assert bridge.proc.wait(60) == 0
    assert "draining" in bridge.tail(50)
    effects = counts(client, f"{name}:effects")
    assert len(effects) == n and set(effects.values()) == {1}
    assert pipeline.fully_committed()


def test_backpressure_pauses_above_max_in_flight_and_resumes(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    bridge = pipeline.start_bridge(max_in_flight=10)
    n = 60
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            producer.submit("tests.app.slow", args=[name, i, 0.05], key=f"k{i}")
    wait_until(lambda: len(counts(client, f"{name}:effects")) == n, 120, "all tasks to run")
    wait_until(pipeline.fully_committed, 30, "offsets committed")
    log = bridge.tail(400)
    assert "paused:" in log and "resumed:" in log
    assert set(counts(client, f"{name}:effects").values()) == {1}
