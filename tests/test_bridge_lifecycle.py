"""Bridge lifecycle on the real stack: commit on revoke, SIGTERM drain, backpressure.

The tests with two bridges in one group run under both group protocols: the classic
one (cooperative-sticky) and KIP-848's ``consumer`` protocol.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from kafcel import Producer
from kafcel.settings import Settings

from .conftest import Pipeline, wait_until
from .test_pipeline import counts, outcomes_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Ledger = tuple[str, "redis.Redis[bytes]"]
PROTOCOLS = pytest.mark.parametrize("group_protocol", ["classic", "consumer"])


def group_session_ms(settings: Settings) -> str | None:
    """The group's own ``consumer.session.timeout.ms`` (KIP-848 groups), if set."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    resource = ConfigResource(ResourceType.GROUP, settings.group_id)
    entry = admin.describe_configs([resource])[resource].result()["consumer.session.timeout.ms"]
    return str(entry.value) if entry.source == 8 else None  # 8: set for this group


@PROTOCOLS
def test_revoked_partitions_are_committed_synchronously(
    pipeline: Pipeline, ledger: Ledger, group_protocol: str
) -> None:
    name, client = ledger
    pipeline.settings = pipeline.settings.replace(group_protocol=group_protocol)
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

    # Shutdown commits the partitions the first bridge kept, without waiting on the group.
    started = time.monotonic()
    assert first.stop(timeout_s=30) == 0
    assert time.monotonic() - started < 10, first.tail(20)
    wait_until(pipeline.fully_committed, 60, "every partition committed")
    assert set(counts(client, f"{name}:effects").values()) == {1}


@PROTOCOLS
def test_a_killed_bridges_partitions_move_to_the_other_and_each_task_runs_once(
    pipeline: Pipeline, ledger: Ledger, group_protocol: str
) -> None:
    name, client = ledger
    pipeline.settings = pipeline.settings.replace(group_protocol=group_protocol)
    first = pipeline.start_bridge()
    second = pipeline.start_bridge(wait_assigned=False)
    second.wait_for_log("assigned:", timeout_s=60)
    first.wait_for_log("revoked:", timeout_s=60)
    if group_protocol == "consumer":
        # The group took the bridges' session timeout: the broker's default is 10 s here.
        assert group_session_ms(pipeline.settings) == "6000"
    n = 40
    pipeline.submit_slow(name, n, 0.3)
    wait_until(lambda: len(counts(client, f"{name}:started")) >= 8, 60, "tasks to start")
    seen = second.log_size()
    first.signal(signal.SIGKILL)
    first.stop(timeout_s=10)
    # The survivor gets the dead bridge's partitions once its session expires, re-reads
    # their uncommitted records, and the once-guard keeps each effect single.
    second.wait_for_log("assigned:", timeout_s=60, after=seen)
    wait_until(lambda: len(counts(client, f"{name}:effects")) == n, 120, "every task to run")
    wait_until(pipeline.fully_committed, 60, "every partition committed")
    assert set(counts(client, f"{name}:effects").values()) == {1}
    assert second.alive()


@pytest.mark.tansu
def test_the_consumer_protocol_runs_on_apache_kafka_and_is_refused_on_tansu(
    pipeline: Pipeline, broker: str
) -> None:
    proc = pipeline.start_bridge(wait_assigned=False, group_protocol="consumer")
    if broker == "kafka":
        proc.wait_for_log("assigned:", timeout_s=60)
        assert group_session_ms(pipeline.settings) == "6000"
        assert proc.stop(timeout_s=30) == 0
        return
    assert proc.proc is not None
    assert proc.proc.wait(60) == 1
    errors = [line for line in proc.tail(50).splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.tail(50)
    assert errors[0].startswith("kafcel: error: group_protocol=consumer")
    assert "Tansu" in errors[0] and "KAFCEL_GROUP_PROTOCOL=classic" in errors[0]
    assert "Traceback" not in proc.tail(50)


def test_sigterm_drains_in_flight_tasks_commits_and_exits_0(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    bridge = pipeline.start_bridge(commit_interval_s=3600)
    n = 8
    pipeline.submit_slow(name, n, 1.0)
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
    pipeline.submit_slow(name, n, 0.05)
    wait_until(lambda: len(counts(client, f"{name}:effects")) == n, 120, "all tasks to run")
    wait_until(pipeline.fully_committed, 30, "offsets committed")
    log = bridge.tail(400)
    assert "paused:" in log and "resumed:" in log
    assert set(counts(client, f"{name}:effects").values()) == {1}
