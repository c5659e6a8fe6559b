"""Guarantees under faults, on the real path: ordering across retries, redispatch of lost
messages, lease renewal and expiry, bounded attempts for a task that kills its worker."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from kafcel import Producer
from kafcel.dev.procs import ManagedProcess, worker_argv
from kafcel.protocol.deadletter import parse_dlq_headers

from .conftest import ROOT, TEST_APP, Pipeline, wait_until
from .test_pipeline import Ledger, counts, outcomes_for

pytestmark = [pytest.mark.integration, pytest.mark.tansu]


@pytest.fixture()
def own_queue(pipeline: Pipeline) -> Iterator[str]:
    """A Celery queue no session worker consumes: the test decides when a worker exists."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    yield queue
    redis.Redis.from_url(pipeline.settings.redis_url).delete(queue)


def start_worker(pipeline: Pipeline, queue: str, **overrides: object) -> ManagedProcess:
    proc = ManagedProcess(
        name=f"worker {queue}",
        argv=worker_argv(TEST_APP, queue=queue, concurrency=2, name=queue),
        env=pipeline.env(**overrides),
        log_path=pipeline.logs_dir / f"{queue}-{len(pipeline.bridges)}-{time.time():.0f}.log",
        cwd=ROOT,
    ).start()
    proc.wait_for_log(" ready.", timeout_s=60)
    return proc


def status_json(pipeline: Pipeline) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "kafcel", "status", "--json"],
        env=pipeline.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    report: dict[str, object] = json.loads(out.stdout)
    return report


@pytest.mark.both_paths
@pytest.mark.timeout(300)
def test_key_order_holds_for_200_keys_of_50_across_retries(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    keys, per_key = 200, 50
    pipeline.start(ordering="key")
    rng = random.Random(7)
    calls = [(k, seq) for seq in range(per_key) for k in range(keys)]
    with Producer(settings=pipeline.settings) as producer:
        for k, seq in calls:
            # One task in twenty fails its first attempt and is retried by Celery.
            fail = rng.random() < 0.05
            producer.submit(
                "tests.app.sequenced", args=[name, f"k{k}", seq, 0.0, fail], key=f"k{k}"
            )
    wait_until(
        lambda: client.hlen(f"{name}:effects") == keys * per_key, 240, "all effects", every_s=1
    )
    out_of_order = []
    for k in range(keys):
        got = [int(x) for x in client.lrange(f"{name}:seq:k{k}", 0, -1)]
        if got != list(range(per_key)):
            out_of_order.append((k, got))
        client.delete(f"{name}:seq:k{k}")
    assert not out_of_order, f"{len(out_of_order)} key(s) out of order, first: {out_of_order[0]}"
    assert set(counts(client, f"{name}:effects").values()) == {1}
    wait_until(pipeline.fully_committed, 60, "offsets committed")


@pytest.mark.timeout(180)
def test_a_task_whose_broker_message_was_lost_is_redispatched_and_runs_once(
    pipeline: Pipeline, ledger: Ledger, own_queue: str
) -> None:
    name, client = ledger
    pipeline.start_bridge(redispatch_after_s=2.0)
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit("tests.app.record", args=[name, "lost"], key="k", queue=own_queue)
    # The message waits in the Celery queue (no worker yet); then Redis loses it, with the
    # bridge's queued mark, as a FLUSHALL or a restart without persistence would.
    wait_until(lambda: client.llen(own_queue) == 1, 60, "the Celery message in its queue")
    assert (client.get(f"kafcel:once:{task_id}") or b"").startswith(b"queued:")
    client.delete(own_queue, f"kafcel:once:{task_id}")
    wait_until(lambda: client.llen(own_queue) == 1, 60, "the redispatched message")
    worker = start_worker(pipeline, own_queue)
    try:
        outcomes = outcomes_for(pipeline, 1)
        assert outcomes[task_id].status == "SUCCESS"
        assert counts(client, f"{name}:effects") == {"lost": 1}
        report = wait_until(
            lambda: (r := status_json(pipeline))["redispatched"] and r, 30, "status to count it"
        )
        assert report["redispatched"] >= 1  # type: ignore[operator]
        wait_until(pipeline.fully_committed, 30, "offsets committed")
    finally:
        worker.stop(timeout_s=20)


@pytest.mark.timeout(180)
def test_lease_is_renewed_while_running_and_a_dead_workers_task_runs_again(
    pipeline: Pipeline, ledger: Ledger, own_queue: str
) -> None:
    name, client = ledger
    lease_s = 1.5
    pipeline.start_bridge(redispatch_after_s=2.0)
    first = start_worker(pipeline, own_queue, once_lease_s=lease_s)
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit(
            "tests.app.slow", args=[name, "job", 8.0], key="k", queue=own_queue
        )
    once_key = f"kafcel:once:{task_id}"
    wait_until(lambda: client.hget(f"{name}:started", "job"), 60, "the task to start")
    # Three leases later the task still holds one: it has been renewed, not left to lapse.
    time.sleep(3 * lease_s)
    value = client.get(once_key)
    assert value is not None and value.startswith(b"running:"), value
    # The whole worker dies (main process and its prefork children) with the message
    # unacked; Redis would only give it back after its visibility timeout (an hour).
    first.signal(signal.SIGKILL, group=True)
    first.stop(timeout_s=10)
    # The lease lapses (no one renews it), then the bridge re-sends and marks it queued.
    wait_until(
        lambda: not (client.get(once_key) or b"queued:").startswith(b"running:"),
        10,
        "the dead worker's lease to expire",
        every_s=0.05,
    )
    second = start_worker(pipeline, own_queue, once_lease_s=lease_s)
    try:
        outcomes = outcomes_for(pipeline, 1)
        assert outcomes[task_id].status == "SUCCESS"
        assert counts(client, f"{name}:started") == {"job": 2}
        assert counts(client, f"{name}:effects") == {"job": 1}
        wait_until(pipeline.fully_committed, 30, "offsets committed")
    finally:
        second.stop(timeout_s=20)


@pytest.mark.both_paths
@pytest.mark.timeout(180)
def test_a_task_that_kills_its_worker_is_dead_lettered_after_max_attempts(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start()
    with Producer(settings=pipeline.settings) as producer:
        doomed = producer.submit("tests.app.suicide", args=[name, "boom"], key="same")
        # The key's next task waits for the doomed one, then runs: nothing stalls.
        after = producer.submit("tests.app.record", args=[name, "after"], key="same")
    outcomes = outcomes_for(pipeline, 2)
    assert outcomes[doomed].status == "FAILURE"
    assert outcomes[doomed].error_class == "TaskLost"
    assert outcomes[after].status == "SUCCESS"
    # max_attempts (3) runs that each killed their process, then no more.
    assert counts(client, f"{name}:attempts")["boom"] == 3
    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)
    headers = parse_dlq_headers(dlq[0].headers())
    assert headers["error.class"] == "TaskLost" and headers["task_id"] == doomed
    wait_until(pipeline.fully_committed, 30, "offsets committed")
