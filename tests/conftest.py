"""Session fixtures: the real stack (Apache Kafka, Redis) and a real Celery worker, started once.

Each test gets its own topics, consumer group and Redis ledger names, so tests never see
each other's records. Services run on ports of their own, away from a developer's stack.

Every test that uses the stack runs on Apache Kafka. Tests marked ``tansu`` (the
cross-check subset) run a second time on Tansu, through the same fixtures: the session
stack is parametrized by broker, so each broker, and the worker on it, starts once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Message, TopicPartition

from kafcel import Producer
from kafcel.dev import DevStack, free_ports
from kafcel.dev.procs import ManagedProcess, bridge_argv, worker_argv
from kafcel.kafka.admin import committed_offsets, end_offsets, ensure_topics, partitions_of
from kafcel.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_APP = "tests.app:app"


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "path" in metafunc.fixturenames:
        # both_paths: once through a bridge, once through a worker consuming the topic.
        both = metafunc.definition.get_closest_marker("both_paths") is not None
        metafunc.parametrize("path", ["bridge", "worker"] if both else ["bridge"], indirect=True)
    if "broker" in metafunc.fixturenames:
        cross_check = metafunc.definition.get_closest_marker("tansu") is not None
        brokers = ["kafka", "tansu"] if cross_check else ["kafka"]
        metafunc.parametrize("broker", brokers, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> str:
    """Which broker the session stack runs: ``kafka`` (Apache Kafka) or ``tansu``."""
    return str(request.param)


@pytest.fixture()
def path(request: pytest.FixtureRequest) -> str:
    """Which path runs the test's records: ``bridge`` (path A) or ``worker`` (path B)."""
    return str(request.param)


@contextlib.contextmanager
def running(stack: DevStack) -> Iterator[DevStack]:
    """``stack`` up for the block, down after it whatever happened."""
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    state = tmp_path_factory.mktemp(f"devstack-{broker}")
    kafka_port, controller_port, redis_port = free_ports(3)
    s = DevStack(
        kafka_port=kafka_port,
        kafka_ports=[kafka_port, controller_port] if broker == "kafka" else [],
        redis_port=redis_port,
        state_dir=state,
        broker=broker,
        cache_dir=ROOT / ".kafcel" / "kafka",
    )
    with running(s):
        yield s


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A RabbitMQ of the session's own (Celery's broker in the ``rabbitmq`` tests),
    started by the first test that asks for it."""
    s = DevStack(
        services=("rabbitmq",),
        rabbitmq_ports=free_ports(3),
        state_dir=tmp_path_factory.mktemp("rabbitmq"),
        cache_dir=ROOT / ".kafcel" / "kafka",
    )
    with running(s):
        yield s


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def base_env(stack: DevStack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFCEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["KAFCEL_BOOTSTRAP_SERVERS"] = stack.bootstrap_servers
    env["KAFCEL_REDIS_URL"] = stack.redis_url
    return env


@pytest.fixture(scope="session")
def worker(stack: DevStack, logs_dir: Path) -> Iterator[ManagedProcess]:
    proc = ManagedProcess(
        name="celery worker",
        argv=worker_argv(TEST_APP, queue="kafcel-tests", concurrency=4, name="tests"),
        env=base_env(stack),
        log_path=logs_dir / f"worker-{stack.broker}.log",
        cwd=ROOT,
    ).start()
    try:
        proc.wait_for_log(" ready.", timeout_s=60)
        yield proc
    finally:
        proc.stop(timeout_s=20)


@pytest.fixture()
def ledger(stack: DevStack) -> Iterator[tuple[str, redis.Redis[bytes]]]:
    name = f"kafcel:test:{uuid.uuid4().hex[:10]}"
    client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    yield name, client
    for suffix in ("attempts", "effects", "started", "log"):
        client.delete(f"{name}:{suffix}")


@dataclass
class Pipeline:
    """One test's topics and group, plus helpers to run bridges and read topics."""

    stack: DevStack
    settings: Settings
    logs_dir: Path
    path: str = "bridge"
    bridges: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)
    # Celery's broker when it is not the stack's Redis (RabbitMQ); then the test's bridges
    # and workers use a Celery queue of the test's own, `queue`.
    celery_broker_url: str | None = None
    # That queue's durability and arguments (tests/app.py), a JSON object.
    queue_options: dict[str, Any] | None = None

    @property
    def queue(self) -> str:
        return f"q-{self.settings.topic}"

    def env(self, **overrides: Any) -> dict[str, str]:
        env = {**base_env(self.stack), **self.settings.replace(**overrides).as_env()}
        if self.celery_broker_url is not None:
            env["CELERY_BROKER_URL"] = self.celery_broker_url
            env["KAFCEL_TESTS_QUEUE"] = self.queue
        if self.queue_options is not None:
            env["KAFCEL_TESTS_QUEUE_OPTIONS"] = json.dumps(self.queue_options)
        return env

    def start_worker(
        self, *, concurrency: int = 2, queue: str | None = None, **overrides: Any
    ) -> ManagedProcess:
        """A plain Celery worker (no --kafcel-consume) on the test's own queue, or on
        ``queue`` (several, comma separated)."""
        n = len(self.workers)
        queue = queue or self.queue
        proc = ManagedProcess(
            name=f"worker {n}",
            argv=worker_argv(TEST_APP, queue=queue, concurrency=concurrency, name=f"w{n}"),
            env={**self.env(**overrides), "KAFCEL_TESTS_QUEUE": self.queue},
            log_path=self.logs_dir / f"{self.settings.topic}-worker{n}.log",
            cwd=ROOT,
        ).start()
        self.workers.append(proc)
        proc.wait_for_log(" ready.", timeout_s=60)
        return proc

    def start_bridge(
        self, *, wait_assigned: bool = True, app: str = TEST_APP, **overrides: Any
    ) -> ManagedProcess:
        n = len(self.bridges)
        proc = ManagedProcess(
            name=f"bridge {n}",
            argv=bridge_argv(app),
            env=self.env(**overrides),
            log_path=self.logs_dir / f"{self.settings.topic}-bridge{n}.log",
            cwd=ROOT,
        ).start()
        self.bridges.append(proc)
        if wait_assigned:
            proc.wait_for_log("assigned:", timeout_s=60)
        return proc

    def submit_slow(self, ledger: str, n: int, seconds: float) -> None:
        """``n`` ``tests.app.slow`` tasks of ``seconds`` each into ``ledger``, keys k0, k1…"""
        with Producer(settings=self.settings) as producer:
            for i in range(n):
                producer.submit("tests.app.slow", args=[ledger, i, seconds], key=f"k{i}")

    def start(self, **overrides: Any) -> ManagedProcess:
        """What consumes the task topic on the test's path: a bridge (then the session
        worker runs the tasks) or a worker consuming it itself."""
        if self.path == "worker":
            return self.start_consumer(**overrides)
        return self.start_bridge(**overrides)

    def start_consumer(
        self,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        wait_assigned: bool = True,
        extra: tuple[str, ...] = (),
        **overrides: Any,
    ) -> ManagedProcess:
        """A Celery worker that consumes the test's task topic itself (path B), on a
        Celery queue of the test's own (where its retries go)."""
        n = len(self.workers)
        queue = self.queue
        proc = ManagedProcess(
            name=f"consuming worker {n}",
            argv=[
                *worker_argv(TEST_APP, queue=queue, concurrency=concurrency, name=f"c{n}"),
                *("-P", pool, "--kafcel-consume", *extra),
            ],
            env={**self.env(**overrides), "KAFCEL_TESTS_QUEUE": queue},
            log_path=self.logs_dir / f"{self.settings.topic}-worker{n}.log",
            cwd=ROOT,
        ).start()
        self.workers.append(proc)
        if wait_assigned:
            proc.wait_for_log("assigned:", timeout_s=60)
        return proc

    def tps(self, topic: str | None = None) -> list[tuple[str, int]]:
        t = topic or self.settings.topic
        return [(t, p) for p in partitions_of(self.settings.bootstrap_servers, t)]

    def committed(self, topic: str | None = None) -> dict[tuple[str, int], int | None]:
        return committed_offsets(
            self.settings.bootstrap_servers, self.settings.group_id, self.tps(topic)
        )

    def ends(self, topic: str | None = None) -> dict[tuple[str, int], int]:
        return end_offsets(self.settings.bootstrap_servers, self.tps(topic))

    def fully_committed(self, topic: str | None = None) -> bool:
        ends = self.ends(topic)
        committed = self.committed(topic)
        return all((committed.get(tp) or 0) >= end for tp, end in ends.items())

    def read(
        self, topic: str, until: Callable[[list[Message]], bool], timeout_s: float = 60
    ) -> list[Message]:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(t, p, 0) for t, p in self.tps(topic)])
        got: list[Message] = []
        deadline = time.monotonic() + timeout_s
        try:
            while not until(got):
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out reading {topic}: {len(got)} record(s)")
                got.extend(m for m in consumer.consume(500, timeout=0.2) if m.error() is None)
            return got
        finally:
            consumer.close()


@pytest.fixture()
def pipeline(
    stack: DevStack, worker: ManagedProcess, logs_dir: Path, path: str
) -> Iterator[Pipeline]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        topic=f"t-{run}",
        group_id=f"g-{run}",
        partitions=4,
        session_timeout_s=6.0,
        commit_interval_s=0.5,
        drain_timeout_s=30.0,
    )
    ensure_topics(
        settings.bootstrap_servers,
        {settings.topic: 4, settings.results_topic: 4, settings.dlq_topic: 4},
    )
    p = Pipeline(stack=stack, settings=settings, logs_dir=logs_dir, path=path)
    try:
        yield p
    finally:
        for proc in [*p.bridges, *p.workers]:
            proc.stop(timeout_s=30)
