"""NetLab against the real kernel: namespaces, veth pairs and nft cuts (needs root)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kafcel.chaos.netlab import NetLab, NetLabError, Netns
from kafcel.dev import DevStack, free_ports
from kafcel.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

# Run inside the namespace: one connect, its outcome as the exit status.
_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close()
except TimeoutError:
    sys.exit(3)
except OSError:
    sys.exit(4)
"""
_CONNECTED, _TIMED_OUT = 0, 3


@pytest.fixture()
def lab() -> Iterator[NetLab]:
    # No skip: `make test` runs as root (it installs packages) with ip and nft installed;
    # where that is not so, NetLab's own error names what is missing and the test fails.
    with NetLab() as lab:
        yield lab


@pytest.fixture()
def listener(lab: NetLab) -> Iterator[int]:
    server = socket.socket()
    server.bind((lab.address, 0))
    server.listen(16)
    port = int(server.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


def _connect(ns: Netns, address: str, port: int) -> int:
    argv = ns.argv([sys.executable, "-c", _CONNECT, address, str(port)])
    return subprocess.run(argv, timeout=20).returncode


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_a_cut_makes_connects_time_out_and_heal_restores_them(lab: NetLab, listener: int) -> None:
    ns = lab.namespace("bridge 1")
    other = lab.namespace("bridge 0")
    assert _connect(ns, lab.address, listener) == _CONNECTED

    ns.cut([listener])
    # Dropped without a RST: the connect hangs until its own timeout, not refused.
    assert _connect(ns, lab.address, listener) == _TIMED_OUT
    assert _connect(other, lab.address, listener) == _CONNECTED, "only that namespace is cut"
    with socket.create_connection((lab.address, listener), timeout=1.5):
        pass  # the host still reaches it too

    ns.heal()
    assert _connect(ns, lab.address, listener) == _CONNECTED
    ns.heal()  # nothing to remove: no error


def test_close_leaves_no_namespace_veth_or_address(lab: NetLab) -> None:
    ns = lab.namespace("worker 0")
    ns.cut([6379])
    address = lab.address
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name in names
    lab.close()
    lab.close()  # idempotent
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in names
    tag = ns.name.split("-")[1]
    assert f"kc{tag}" not in _links()
    lo = subprocess.run(["ip", "-o", "addr", "show", "lo"], capture_output=True, text=True)
    assert f"{address}/32" not in lo.stdout
    with pytest.raises(NetLabError, match="closed"):
        lab.namespace("late")


def test_a_failing_command_is_named_in_the_error(lab: NetLab) -> None:
    ns = lab.namespace("worker 1")
    with pytest.raises(ConfigError, match="ports"):
        ns.cut([])
    with pytest.raises(ConfigError, match="label"):
        lab.namespace(" ")
    with pytest.raises(ConfigError, match="timeout_s"):
        NetLab(timeout_s=float("nan"))
    broken = Netns(name="kafcel-nonexistent", label="x", service_address=lab.address, timeout_s=5)
    with pytest.raises(NetLabError, match="ip netns exec kafcel-nonexistent"):
        broken.cut([1])


def test_the_dev_redis_answers_clients_on_the_lab_address(lab: NetLab, tmp_path: Path) -> None:
    """Redis's protected mode refuses every client but 127.0.0.1 when no password is set:
    the stack bound to another address must still serve the chaos processes."""
    redis_port, *kafka_ports = free_ports(3)
    stack = DevStack(
        host=lab.address,
        redis_port=redis_port,
        kafka_ports=kafka_ports,
        state_dir=tmp_path,
        services=("redis",),
        start_timeout_s=15,
    )
    try:
        stack.up()
        assert redis.Redis.from_url(stack.redis_url, socket_timeout=2).ping()
    finally:
        stack.down()


def test_without_root_the_scenario_row_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafcel.chaos import netlab
    from kafcel.chaos.runner import _not_run, _open_netlab
    from kafcel.chaos.scenarios import SCENARIOS

    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    with pytest.raises(NetLabError, match=r"need root .* uid 1000"):
        NetLab()
    partitions = [s for s in SCENARIOS if s.netns]
    assert {s.name for s in partitions} == {
        "bridge-partition",
        "worker-partition",
        "kafka-partition",
    }
    lab, why = _open_netlab(partitions)
    assert lab is None and "need root" in why
    assert _open_netlab([s for s in SCENARIOS if not s.netns]) == (None, "")
    row = _not_run(partitions[0], why).row()
    assert row["passed"] is False and "need root" in row["note"]
