"""The local RabbitMQ: Debian's ``rabbitmq-server``, for Celery's broker when a test, the
chaos suite or the bench asks for it.

It runs on ports of its own (AMQP, Erlang distribution, and its own port mapper, epmd),
as the user who starts it, with its data under the stack's state directory, so it never
meets a system RabbitMQ. Two processes: epmd in the foreground, because RabbitMQ would
otherwise start one as a daemon on the shared port 4369 that nothing would stop, then the
broker itself. The start script ``exec``\\ s the Erlang VM (``RABBITMQ_ALLOW_INPUT``, with
``-noinput``), so the pid in the pid file is the broker's, for faults and for ``down``.
Data persists across restarts of the node (durable queues and persistent messages
survive, as on a real server), and is dropped by ``kafcel dev down``'s caller with the
state directory.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from pathlib import Path

import amqp

from ..errors import DevStackError
from .service import PROBE_TIMEOUT_S, Service, port_open

__all__ = ["RABBITMQ_USER", "rabbitmq_services", "rabbitmq_url"]

RABBITMQ_USER = ("guest", "guest")
# Debian's package keeps the real start script here; /usr/sbin/rabbitmq-server is a
# wrapper that switches to the `rabbitmq` system user.
_SCRIPT_DIRS = (Path("/usr/lib/rabbitmq/bin"),)
_EPMD_WAIT_S = 10.0


def rabbitmq_url(host: str, port: int) -> str:
    user, password = RABBITMQ_USER
    return f"amqp://{user}:{password}@{host}:{port}//"


def _binary(name: str) -> str:
    for directory in _SCRIPT_DIRS:
        if (directory / name).is_file():
            return str(directory / name)
    path = shutil.which(name)
    if path is None:
        raise DevStackError(
            f"{name} not found: run `make setup` or `apt-get install rabbitmq-server`"
        )
    return path


def _dist_interface(host: str) -> list[str]:
    """Erlang's distribution listens on every address unless told one (an IPv4 tuple)."""
    try:
        address = ipaddress.IPv4Address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return []
    return ["-kernel", "inet_dist_use_interface", "{" + str(address).replace(".", ",") + "}"]


def _connect(host: str, port: int) -> amqp.Connection:
    user, password = RABBITMQ_USER
    conn = amqp.Connection(
        host=f"{host}:{port}",
        userid=user,
        password=password,
        connect_timeout=PROBE_TIMEOUT_S,
        read_timeout=PROBE_TIMEOUT_S,
        write_timeout=PROBE_TIMEOUT_S,
    )
    conn.connect()
    return conn


def rabbitmq_services(
    *, host: str, port: int, dist_port: int, epmd_port: int, state_dir: Path
) -> list[Service]:
    """epmd and the broker, in the order they start."""
    home = state_dir / "rabbitmq"

    def prepare() -> None:
        # The broker starts its own epmd daemon if none answers on its port: that one
        # would outlive it, so ours must be up first.
        deadline = time.monotonic() + _EPMD_WAIT_S
        while not port_open(host, epmd_port):
            if time.monotonic() > deadline:
                raise DevStackError(f"epmd did not answer on {host}:{epmd_port}")
            time.sleep(0.05)
        home.mkdir(parents=True, exist_ok=True)
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq-env.conf").write_text("")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {host}:{port}\n"
            # guest may connect from any address: the chaos suite's network namespaces.
            "loopback_users = none\n"
            # The dev machine's disk is shared with Kafka's logs; RabbitMQ's default alarm
            # (50 MB free) is kept, nothing stricter.
        )

    def command() -> list[str]:
        env = {
            # The Erlang cookie lives in HOME; the path is also what marks the process.
            "HOME": str(home),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": host,
            "RABBITMQ_NODENAME": f"kafcel-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": host,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_LOGS": "-",
            # exec the VM instead of a signal-forwarding shell; -noinput, as stdin is closed.
            "RABBITMQ_ALLOW_INPUT": "true",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": " ".join(["-noinput", *_dist_interface(host)]),
        }
        env_bin = shutil.which("env") or "/usr/bin/env"
        return [env_bin, *(f"{k}={v}" for k, v in env.items()), _binary("rabbitmq-server")]

    def answers() -> bool:
        if not port_open(host, port):
            return False
        try:
            _connect(host, port).close()
        except Exception:  # py-amqp raises socket errors and its own AMQPError tree
            return False
        return True

    def version() -> str:
        try:
            conn = _connect(host, port)
        except Exception:
            return "rabbitmq ?"
        try:
            found = conn.server_properties.get("version", b"?")
        finally:
            conn.close()
        return f"rabbitmq {found.decode() if isinstance(found, bytes) else found}"

    epmd = Service(
        name="epmd",
        host=host,
        port=epmd_port,
        markers=("epmd", "-port", "-address"),
        command=lambda: [_binary("epmd"), "-port", str(epmd_port), "-address", host],
        answers=lambda: port_open(host, epmd_port),
    )
    broker = Service(
        name="rabbitmq",
        host=host,
        port=port,
        # No port: `dev down` must find the RabbitMQ an `up` on any port started.
        markers=(str(home),),
        command=command,
        answers=answers,
        prepare=prepare,
        version=version,
    )
    return [epmd, broker]
