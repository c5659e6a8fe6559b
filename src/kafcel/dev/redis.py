"""The local Redis: Debian's ``redis-server``, in memory only."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import redis

from ..errors import DevStackError
from .service import PROBE_TIMEOUT_S, Service, port_open

__all__ = ["redis_service"]


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise DevStackError(
            "redis-server not found: run `make setup` or `apt-get install redis-server`"
        )
    return path


def _version() -> str:
    out = subprocess.run([_redis_server(), "--version"], capture_output=True, text=True).stdout
    # "Redis server v=7.0.15 sha=..."
    word = next((w for w in out.split() if w.startswith("v=")), "v=?")
    return f"redis {word[2:]}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: whatever it resolves to, not only 127.0.0.1


def redis_service(*, host: str, port: int, state_dir: Path) -> Service:
    url = f"redis://{host}:{port}/0"

    def command() -> list[str]:
        listen = ["--port", str(port), "--bind", host]
        if not _loopback(host):
            # Without a password, protected mode answers DENIED to every client that is
            # not 127.0.0.1 or ::1: bound to another address on purpose (the chaos suite's
            # network namespaces), the dev Redis must serve that address's clients.
            listen += ["--protected-mode", "no"]
        # No RDB or AOF files: the dev Redis is disposable.
        disk = ["--save", "", "--appendonly", "no", "--dir", str(state_dir)]
        return [_redis_server(), *listen, *disk, "--daemonize", "no"]

    def answers() -> bool:
        if not port_open(host, port):
            return False
        t = PROBE_TIMEOUT_S
        client = redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return Service(
        name="redis",
        host=host,
        port=port,
        markers=("redis-server",),
        command=command,
        answers=answers,
        version=_version,
    )
