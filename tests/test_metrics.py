"""Prometheus metrics on the real path: a bridge and a prefork worker, scraped over HTTP."""

from __future__ import annotations

import glob
import json
import re
import socket
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from confluent_kafka import Producer as KafkaProducer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kafcel import Envelope, Producer
from kafcel.bridge.events import INVALID_TASK
from kafcel.celery import HEADER
from kafcel.dev import DevStack, free_ports
from kafcel.dev.procs import ManagedProcess, worker_argv
from kafcel.errors import ConfigError
from kafcel.protocol.outcome import Origin
from kafcel.telemetry.metrics import BridgeMetrics, WorkerMetrics, start_bridge_metrics

from .conftest import ROOT, TEST_APP, Pipeline, wait_until
from .test_pipeline import Ledger, counts

RECORD = "tests.app.record"
POISON: list[tuple[bytes, str]] = [
    (b'{"v": 1, "task": "tests.app.record", "args": [', "InvalidJson"),
    (b'{"v": 1, "task": "tests.app.record", "args": "no"}', "SchemaViolation"),
    (Envelope(task="tests.app.nope").encode(), "TaskNotAllowed"),
]


class Scrape:
    """One scrape of ``/metrics``, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for n, have, value in self.samples
            if n == name and all(have.get(k) == v for k, v in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        return [have for n, have, _ in self.samples if n == name]


def scrape(port: int) -> Scrape | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return Scrape(response.read().decode())
    except OSError:
        return None  # not listening yet


def test_bridges_in_one_process_keep_apart_and_a_revoked_partition_drops_its_lag() -> None:
    a, b = BridgeMetrics(), BridgeMetrics()
    a.consumed("t", "x")
    a.settled("t", "x", "SUCCESS", 0.02)
    b.consumed("t", "x")
    b.consumed("t", "y")
    for metrics, partitions in ((a, (0, 1)), (b, (2,))):
        metrics.in_flight(3)
        metrics.lags({("t", p): 10 + p for p in partitions})
    first = Scrape(generate_latest(a.registry).decode())
    assert first.total("kafcel_records_consumed_total") == 1
    assert first.total("kafcel_tasks_settled_total", status="success") == 1
    assert first.total("kafcel_end_to_end_latency_seconds_bucket", le="0.025") == 1
    assert first.total("kafcel_end_to_end_latency_seconds_bucket", le="0.01") == 0
    assert Scrape(generate_latest(b.registry).decode()).total("kafcel_records_consumed_total") == 2
    # Partition 1 moves to another bridge: the next rounds report partition 0 alone.
    for _ in range(2):
        a.in_flight(0)
        a.lags({("t", 0): 0})
    later = Scrape(generate_latest(a.registry).decode())
    assert later.series("kafcel_consumer_lag") == [{"topic": "t", "partition": "0"}]
    assert later.total("kafcel_in_flight") == 0


def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve bridge metrics on 0.0.0.0:{port}"):
            start_bridge_metrics(port=port)
    metrics = start_bridge_metrics(port=port)  # free again
    try:
        served = scrape(port)
        assert served is not None and served.total("kafcel_in_flight") == 0
    finally:
        metrics.close()


def test_the_grafana_dashboard_queries_only_metrics_kafcel_exports() -> None:
    bridge = BridgeMetrics()
    bridge.consumed("t", "x")
    bridge.dispatched("t", "x", 0.1)
    bridge.settled("t", "x", "SUCCESS", 0.2)
    bridge.dead_lettered("t", "x", "InvalidJson", "bridge")
    bridge.redispatched("t", "x")
    bridge.in_flight(1)
    bridge.lags({("t", 0): 1})
    registry = CollectorRegistry()
    worker = WorkerMetrics(registry=registry)
    worker.attempted("x", "retry", time.monotonic())
    worker.finished("x", "success", time.monotonic(), 1)
    worker.skipped("x", "done")
    worker.dead_lettered("x", "RuntimeError")
    exported = {
        name
        for text in (generate_latest(bridge.registry), generate_latest(registry))
        for name, _, _ in Scrape(text.decode()).samples
    }
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    used = {name for expr in exprs for name in re.findall(r"\bkafcel_[a-z_]+", expr)}
    assert used and used <= exported, used - exported
    assert all(name.startswith("kafcel_") for name in exported)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_bridge_whose_metrics_port_is_taken_exits_with_a_clear_error(pipeline: Pipeline) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = pipeline.start_bridge(metrics_port=port, wait_assigned=False)
        wait_until(lambda: not bridge.alive(), 60, "the bridge to exit")
    assert bridge.proc is not None and bridge.proc.returncode == 1
    assert f"kafcel: error: cannot serve bridge metrics on 0.0.0.0:{port}" in bridge.tail()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bridge_metrics_count_each_record_by_topic_and_task(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    topic = pipeline.settings.topic
    (port,) = free_ports(1)
    pipeline.start_bridge(metrics_port=port)
    n = 40
    raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    for value, _ in POISON:
        raw.produce(topic, value, key=b"poison")
    raw.flush(10)
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            producer.submit(RECORD, args=[name, i], key=f"user-{i % 7}")
    wait_until(lambda: len(counts(client, f"{name}:effects")) == n, 60, "every task to run")
    wait_until(pipeline.fully_committed, 60, "offsets committed")

    def settled() -> Scrape | None:
        m = scrape(port)
        done = m is not None and m.total("kafcel_tasks_settled_total", topic=topic) == n
        lag = m is not None and len(m.series("kafcel_consumer_lag")) == 4
        idle = m is not None and m.total("kafcel_in_flight") == 0
        return m if done and lag and idle else None

    m = wait_until(settled, 30, "the bridge to report every record settled and none in flight")
    assert m.total("kafcel_records_consumed_total", topic=topic, task=RECORD) == n
    assert m.total("kafcel_records_consumed_total", topic=topic, task=INVALID_TASK) == len(POISON)
    assert m.total("kafcel_tasks_dispatched_total", topic=topic, task=RECORD) == n
    assert m.total("kafcel_tasks_settled_total", topic=topic, task=RECORD, status="success") == n
    assert m.total("kafcel_dlq_records_total", topic=topic) == len(POISON)
    for _, error_class in POISON:
        assert (
            m.total(
                "kafcel_dlq_records_total",
                topic=topic,
                task=INVALID_TASK,
                error_class=error_class,
                stage="bridge",
            )
            == 1
        ), error_class
    assert m.total("kafcel_redispatches_total", topic=topic) == 0
    # One lag series per partition the bridge owns; everything is committed.
    lag = {s["partition"]: s["topic"] for s in m.series("kafcel_consumer_lag")}
    assert lag == {str(p): topic for p in range(4)}
    wait_until(
        lambda: (s := scrape(port)) is not None and s.total("kafcel_consumer_lag") == 0,
        30,
        "the lag gauge to reach 0",
    )
    # Latency histograms: one observation per task, in cumulative buckets.
    assert m.total("kafcel_dispatch_latency_seconds_count", topic=topic) == n
    assert m.total("kafcel_end_to_end_latency_seconds_count", topic=topic, task=RECORD) == n
    assert m.total("kafcel_end_to_end_latency_seconds_bucket", topic=topic, le="+Inf") == n
    assert 0 < m.total("kafcel_end_to_end_latency_seconds_sum", topic=topic) < n * 60
    assert m.total("kafcel_bridge_process_resident_memory_bytes") > 0
    (pipeline.logs_dir / "bridge-metrics.txt").write_text(m.text)


@pytest.fixture()
def own_queue(pipeline: Pipeline) -> Iterator[str]:
    """A Celery queue only this test's worker consumes."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    yield queue
    redis.Redis.from_url(pipeline.settings.redis_url).delete(queue)


def start_worker(pipeline: Pipeline, queue: str, port: int, *options: str) -> ManagedProcess:
    worker = ManagedProcess(
        name=f"worker {queue}",
        argv=[*worker_argv(TEST_APP, queue=queue, concurrency=2, name=queue), *options],
        env=pipeline.env(worker_metrics_port=port),
        log_path=pipeline.logs_dir / f"{queue}-metrics-worker.log",
        cwd=ROOT,
    ).start()
    worker.wait_for_log(" ready.", timeout_s=60)
    return worker


def metric_files(worker: ManagedProcess) -> list[str]:
    """The worker's multiprocess files: one per pool process that counted something."""
    pattern = f"{tempfile.gettempdir()}/kafcel-worker-metrics-{worker.pid}-*/counter_*.db"
    return glob.glob(pattern)


def send_direct(stack: DevStack, pipeline: Pipeline, queue: str, name: str) -> None:
    """A task sent straight to Celery with a kafcel header that dates its submission."""
    client = Celery("metrics-test-client", broker=stack.redis_url)
    client.conf.task_serializer = "json"
    header = Origin(
        topic=pipeline.settings.topic,
        partition=0,
        offset=10**9,  # no record of the bridge: its outcome is ignored there
        results_topic=pipeline.settings.results_topic,
        dlq_topic=pipeline.settings.dlq_topic,
        timestamp_ms=int(time.time() * 1000),
    ).to_header()
    client.send_task(
        "tests.app.flaky_bind",
        args=[name, "direct", 1],
        task_id=f"{name}-direct",
        queue=queue,
        headers={HEADER: header},
    )
    client.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_worker_metrics_sum_the_pool_and_count_once_guard_skips(
    stack: DevStack, pipeline: Pipeline, ledger: Ledger, own_queue: str
) -> None:
    name, client = ledger
    (port,) = free_ports(1)
    worker = start_worker(pipeline, own_queue, port)
    try:
        # ordering=none: two copies of one id run at once, on the pool's two processes.
        pipeline.start_bridge(ordering="none")
        n = 12
        with Producer(settings=pipeline.settings) as producer:
            for i in range(n):
                producer.submit(RECORD, args=[name, i], key=f"u{i % 5}", queue=own_queue)
            producer.submit("tests.app.always_fail", args=[name, "bad"], queue=own_queue)
        wait_until(lambda: len(counts(client, f"{name}:effects")) == n, 60, "the records to run")
        with Producer(settings=pipeline.settings) as producer:
            for _ in range(2):
                # The second copy finds the first running (busy) and comes back later to
                # find it finished (done): the once-guard skips it twice, runs it once.
                producer.submit(
                    "tests.app.slow", args=[name, "twice", 3.0], id=f"{name}-slow", queue=own_queue
                )
        send_direct(stack, pipeline, own_queue, name)
        wait_until(pipeline.fully_committed, 90, "every record settled")

        def complete() -> Scrape | None:
            m = scrape(port)
            done = m is not None and m.total("kafcel_once_guard_skips_total", reason="done") == 1
            direct = m is not None and (
                m.total("kafcel_worker_tasks_total", task="tests.app.flaky_bind") == 2
            )
            return m if done and direct else None

        m = wait_until(complete, 30, "the worker to count every attempt")
        tasks = "kafcel_worker_tasks_total"
        assert m.total(tasks, task=RECORD, status="success") == n
        assert m.total(tasks, task=RECORD) == n
        assert m.total(tasks, task="tests.app.slow", status="success") == 1
        assert m.total(tasks, task="tests.app.always_fail", status="retry") == 2
        assert m.total(tasks, task="tests.app.always_fail", status="failure") == 1
        assert m.total(tasks, task="tests.app.flaky_bind", status="retry") == 1
        assert m.total(tasks, task="tests.app.flaky_bind", status="success") == 1
        skips = "kafcel_once_guard_skips_total"
        assert m.total(skips, task="tests.app.slow", reason="busy") == 1
        assert m.total(skips, task="tests.app.slow", reason="done") == 1
        assert m.total(skips) == 2
        dead = "kafcel_worker_dlq_records_total"
        assert m.total(dead, task="tests.app.always_fail", error_class="RuntimeError") == 1
        assert m.total(dead) == 1
        # Every attempt that ran is timed; end to end needs a dated submission.
        runtime = "kafcel_task_runtime_seconds_count"
        assert m.total(runtime, task=RECORD) == n
        assert m.total(runtime, task="tests.app.always_fail") == 3
        assert m.total("kafcel_task_runtime_seconds_sum", task="tests.app.slow") >= 3.0
        e2e = "kafcel_task_end_to_end_latency_seconds_count"
        assert m.total(e2e, task="tests.app.flaky_bind") == 1
        assert m.total(e2e, task=RECORD) == n  # the bridge dates its header
        effects = counts(client, f"{name}:effects")
        assert effects == {**{str(i): 1 for i in range(n)}, "twice": 1, "direct": 1}
        # The busy copy ran beside the first one: two processes counted, one sum served.
        assert len({Path(f).name.split("_")[-1] for f in metric_files(worker)}) >= 2
        (pipeline.logs_dir / "worker-metrics.txt").write_text(m.text)
    finally:
        worker.stop(timeout_s=20)
    assert not metric_files(worker), "the worker's metric files outlive it"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_worker_metrics_without_a_prefork_pool(
    stack: DevStack, pipeline: Pipeline, ledger: Ledger, own_queue: str, pool: str
) -> None:
    name, client = ledger
    (port,) = free_ports(1)
    worker = start_worker(pipeline, own_queue, port, "--pool", pool)
    try:
        send_direct(stack, pipeline, own_queue, name)
        m = wait_until(
            lambda: (
                (s := scrape(port))
                and s.total("kafcel_worker_tasks_total", status="success") == 1
                and s
            ),
            60,
            "the task to succeed",
        )
        tasks = "kafcel_worker_tasks_total"
        assert m.total(tasks, task="tests.app.flaky_bind", status="retry") == 1
        assert m.total(tasks, task="tests.app.flaky_bind", status="success") == 1
        assert m.total("kafcel_task_runtime_seconds_count", task="tests.app.flaky_bind") == 2
        e2e = "kafcel_task_end_to_end_latency_seconds_count"
        assert m.total(e2e, task="tests.app.flaky_bind") == 1
        assert counts(client, f"{name}:effects") == {"direct": 1}
        # Tasks run in the main process itself: the only process with a file.
        assert {Path(f).name for f in metric_files(worker)} == {f"counter_{worker.pid}.db"}
    finally:
        worker.stop(timeout_s=20)
    assert not metric_files(worker), "the worker's metric files outlive it"
