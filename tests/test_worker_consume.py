"""Path B on real processes: a Celery worker started with ``--kafcel-consume`` reads the
task topic itself, no bridge, with the bridge path's guarantees."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from kafcel import Outcome, Producer
from kafcel.dev import free_ports
from kafcel.kafka.admin import ensure_topics

from .conftest import Pipeline, wait_until
from .test_guarantees import status_json
from .test_metrics import scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Ledger = tuple[str, "redis.Redis[bytes]"]


def counts(client: redis.Redis[bytes], key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def outcomes_for(pipeline: Pipeline, n: int) -> dict[str, Outcome]:
    msgs = pipeline.read(
        pipeline.settings.results_topic,
        until=lambda got: len({Outcome.decode(m.value()).task_id for m in got}) >= n,
        timeout_s=120,
    )
    return {o.task_id: o for o in (Outcome.decode(m.value()) for m in msgs)}


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_consuming_worker_runs_every_record_once_and_commits(
    pipeline: Pipeline, ledger: Ledger, pool: str
) -> None:
    name, client = ledger
    n = 200
    pipeline.start_consumer(pool=pool)
    ids: dict[str, int] = {}
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            ids[producer.submit("tests.app.record", args=[name, i], key=f"user-{i % 17}")] = i
    outcomes = outcomes_for(pipeline, n)
    assert all(outcomes[t].status == "SUCCESS" and outcomes[t].result == ids[t] for t in ids)
    wait_until(pipeline.fully_committed, 30, "offsets committed to the end")
    effects = counts(client, f"{name}:effects")
    assert len(effects) == n and set(effects.values()) == {1}


@pytest.fixture()
def client_app(pipeline: Pipeline) -> Iterator[Celery]:
    """A plain Celery client of the tests' broker and result backend."""
    url = pipeline.settings.redis_url
    app = Celery("client", broker=url, backend=url)
    yield app
    app.close()


class Events:
    """Celery's task events, as Flower receives them, captured in a thread."""

    def __init__(self, app: Celery) -> None:
        self.seen: list[dict[str, Any]] = []
        self._conn = app.connection()
        self._receiver = app.events.Receiver(self._conn, handlers={"*": self.seen.append})
        self._thread = threading.Thread(target=self._capture, daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        with contextlib.suppress(Exception):
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def wait_listening(self, app: Celery) -> None:
        """Until an event of the test's own comes back: the receiver is subscribed."""
        with app.events.default_dispatcher() as dispatcher:

            def heard() -> bool:
                dispatcher.send("kafcel-test-ping")
                return any(e["type"] == "kafcel-test-ping" for e in list(self.seen))

            wait_until(heard, 30, "the event receiver to listen")

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.seen) if e.get("uuid") == task_id]

    def close(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self._conn.release()


def test_events_inspect_signals_and_the_result_backend_see_a_consumed_task(
    pipeline: Pipeline, ledger: Ledger, client_app: Celery
) -> None:
    name, client = ledger
    signalled = f"{name}:signals"
    events = Events(client_app)
    try:
        events.wait_listening(client_app)
        pipeline.start_consumer(extra=("-E",))
        with Producer(settings=pipeline.settings) as producer:
            slow_id = producer.submit("tests.app.slow", args=[name, "long", 15.0], key="a")
            quick_id = producer.submit("tests.app.record", args=[signalled, "s"], key="b")
        wait_until(lambda: client.hexists(f"{name}:started", "long"), 60, "the task to start")
        # Only the consuming worker, whose one answer ends each call.
        inspect = client_app.control.inspect([f"c0@{socket.gethostname()}"], timeout=10, limit=1)
        active = [request for requests in (inspect.active() or {}).values() for request in requests]
        assert [r["id"] for r in active if r["name"] == "tests.app.slow"] == [slow_id]
        queried = inspect.query_task(slow_id) or {}
        assert [state for found in queried.values() for state, _ in found.values()] == ["active"]
        # The result backend, as AsyncResult.get() reads it.
        assert AsyncResult(quick_id, app=client_app).get(timeout=30) == "s"
        assert AsyncResult(slow_id, app=client_app).get(timeout=60) == "long"
        assert [x.decode() for x in client.lrange(signalled, 0, -1)] == [
            "task_prerun",
            "task_postrun",
        ]
        wait_until(
            lambda: {"task-received", "task-started", "task-succeeded"} <= set(events.of(slow_id)),
            30,
            "the task's events",
        )
        wait_until(pipeline.fully_committed, 30, "offsets committed")
    finally:
        events.close()
        client.delete(
            signalled, f"{signalled}:attempts", f"{signalled}:effects", f"{signalled}:log"
        )


def test_soft_and_hard_time_limits_on_a_consuming_prefork_worker(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start_consumer(pool="prefork")
    with Producer(settings=pipeline.settings) as producer:
        soft = producer.submit("tests.app.soft_limited", args=[name, "soft"], key="a")
        hard = producer.submit("tests.app.hard_limited", args=[name, "hard"], key="b")
    outcomes = outcomes_for(pipeline, 2)
    assert outcomes[soft].status == "SUCCESS" and outcomes[soft].result == "soft"
    assert outcomes[hard].status == "FAILURE"
    assert outcomes[hard].error_class == "TimeLimitExceeded"
    wait_until(pipeline.fully_committed, 30, "offsets committed")
    # Killed by its limit, it is not run again.
    assert counts(client, f"{name}:attempts") == {"hard": 1}
    assert counts(client, f"{name}:effects") == {"soft": 1}


def test_sigterm_finishes_the_running_tasks_and_the_next_worker_runs_the_rest(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    first = pipeline.start_consumer(concurrency=2)
    n = 8
    pipeline.submit_slow(name, n, 1.5)
    wait_until(lambda: client.hlen(f"{name}:started") >= 2, 60, "two tasks to start")
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    # Warm shutdown: the running tasks finish, their records are committed, the rest
    # stays for the partitions' next owner; no drain waits for tasks never started.
    wait_until(lambda: not first.alive(), 40, "the worker to exit")
    # The running tasks' 1.5 s and the group's goodbye, not a drain timeout (10 s).
    assert time.monotonic() - started < 25
    assert "drain timeout" not in first.log_path.read_text()
    ran = set(counts(client, f"{name}:effects"))
    assert len(ran) >= 2
    pipeline.start_consumer(concurrency=2)
    wait_until(lambda: client.hlen(f"{name}:effects") == n, 90, "every task to run")
    assert set(counts(client, f"{name}:effects").values()) == {1}
    # None of the tasks the first worker finished ran again.
    assert all(client.hget(f"{name}:started", item) == b"1" for item in ran)
    wait_until(pipeline.fully_committed, 30, "offsets committed")


def test_a_remote_shutdown_hands_nothing_over_again_and_the_next_worker_runs_the_rest(
    pipeline: Pipeline, ledger: Ledger, client_app: Celery
) -> None:
    name, client = ledger
    first = pipeline.start_consumer(concurrency=1)
    n = 5
    pipeline.submit_slow(name, n, 1.0)
    wait_until(lambda: client.hlen(f"{name}:started") >= 1, 60, "a task to start")
    # `celery control shutdown`: Celery closes its consumer as for SIGTERM, but sets no
    # shutdown flag; nothing was dropped by a reconnect, so nothing is handed over again.
    client_app.control.shutdown(destination=[f"c0@{socket.gethostname()}"])
    wait_until(lambda: not first.alive(), 40, "the worker to exit")
    assert "handed over again" not in first.log_path.read_text()
    pipeline.start_consumer(concurrency=2)
    wait_until(lambda: client.hlen(f"{name}:effects") == n, 90, "every task to run")
    assert set(counts(client, f"{name}:effects").values()) == {1}
    wait_until(pipeline.fully_committed, 30, "offsets committed")


def test_a_killed_consuming_worker_loses_nothing_and_repeats_no_effect(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    lease_s = 1.5
    first = pipeline.start_consumer(concurrency=2, once_lease_s=lease_s)
    n = 6
    pipeline.submit_slow(name, n, 2.0)
    wait_until(lambda: client.hlen(f"{name}:started") >= 2, 60, "two tasks to start")
    # The whole worker at once, main process and pool: nothing committed, leases held.
    first.signal(signal.SIGKILL, group=True)
    first.stop(timeout_s=10)
    pipeline.start_consumer(concurrency=2, once_lease_s=lease_s)
    wait_until(lambda: client.hlen(f"{name}:effects") == n, 120, "every task to run")
    assert set(counts(client, f"{name}:effects").values()) == {1}
    wait_until(pipeline.fully_committed, 30, "offsets committed")


def test_status_shows_the_consuming_worker_with_its_partitions(pipeline: Pipeline) -> None:
    pipeline.start_consumer()

    def members() -> list[dict[str, Any]]:
        found = status_json(pipeline)["bridges"]
        assert isinstance(found, list)
        return [m for m in found if m["partitions"]]

    (member,) = wait_until(members, 30, "the worker's presence with its partitions")
    assert member["role"] == "worker"
    assert sorted(member["partitions"]) == [0, 1, 2, 3]
    out = subprocess.run(
        [sys.executable, "-m", "kafcel", "status"],
        env=pipeline.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "worker" in out.stdout and "consuming workers" in out.stdout


def test_a_consuming_worker_serves_the_record_metrics_and_json_events_of_a_bridge(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, _ = ledger
    (port,) = free_ports(1)
    worker = pipeline.start_consumer(metrics_port=port, log_format="json")
    with Producer(settings=pipeline.settings) as producer:
        ids = [producer.submit("tests.app.record", args=[name, i], key=f"k{i}") for i in range(5)]
    outcomes_for(pipeline, 5)

    def settled() -> float:
        served = scrape(port)
        return served.total("kafcel_tasks_settled_total") if served is not None else 0.0

    wait_until(lambda: settled() >= 5, 30, "five settles on the worker's /metrics")

    def logged() -> bool:
        lines = worker.log_path.read_text().splitlines()
        by_task: dict[str, set[str]] = {}
        for event in (json.loads(line) for line in lines if line.startswith("{")):
            if event.get("task_id") in ids:
                by_task.setdefault(event["task_id"], set()).add(event.get("event", ""))
        return all({"dispatched", "settled", "finished"} <= by_task.get(i, set()) for i in ids)

    # The loop's record events and the task's own, in one JSON log (written as it goes).
    wait_until(logged, 30, "each task's dispatched, finished and settled events")


def test_a_worker_that_cannot_consume_stops_with_one_line_and_a_failure_code(
    pipeline: Pipeline,
) -> None:
    # Outcomes go to the partition numbered like their request's: too few is refused.
    topic = f"{pipeline.settings.topic}-narrow"
    ensure_topics(pipeline.settings.bootstrap_servers, {topic: 4, f"{topic}.results": 2})
    worker = pipeline.start_consumer(
        wait_assigned=False, topic=topic, results_topic=f"{topic}.results"
    )
    wait_until(lambda: not worker.alive(), 60, "the worker to stop")
    assert worker.stop() not in (0, None)
    log = worker.log_path.read_text()
    assert "the worker stops consuming Kafka" in log and "kafka-topics.sh --alter" in log
    assert "Traceback" not in log
