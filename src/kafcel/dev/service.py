"""One local service run detached and stopped by its pid file: the part every service shares.

Services run in their own session (output to ``<state_dir>/<name>.log``) so they outlive
the ``kafcel dev up`` process and ignore Ctrl-C in its terminal. A pid file in
``state_dir`` marks a service as ours; anything already answering on a port is reused and
never stopped. A pid counts as ours only while its command line still holds the service's
markers, so a recycled PID is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DevStackError

__all__ = ["PROBE_TIMEOUT_S", "Service", "ServiceStatus", "Supervisor", "free_ports", "port_open"]

_POLL_S = 0.1
_STOP_TIMEOUT_S = 20.0
_GONE_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 1.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class ServiceStatus:
    """What :meth:`DevStack.status` knows about one service."""

    name: str
    address: str
    running: bool
    managed: bool
    pid: int | None
    version: str = ""


@dataclass(frozen=True)
class Service:
    """How to start, probe and recognise one service."""

    name: str
    host: str
    port: int
    # Every marker must appear in /proc/PID/cmdline for the pid to count as this service.
    markers: tuple[str, ...]
    command: Callable[[], list[str]]
    answers: Callable[[], bool]
    # Run before the first start (fetch jars, format a log directory); may be slow.
    prepare: Callable[[], None] = field(default=lambda: None)
    version: Callable[[], str] = field(default=lambda: "")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


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


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
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


def log_tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return " | ".join(lines[-5:]) or "(empty log)"


class Supervisor:
    """Starts, recognises and stops services by the pid files in ``state_dir``."""

    def __init__(self, *, state_dir: Path, start_timeout_s: float) -> None:
        self.state_dir = state_dir
        self.start_timeout_s = start_timeout_s
        # Children spawned by this process, kept so they can be reaped (no zombies, no
        # "still running" ResourceWarning) when stopped from the same process.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def pid_file(self, service: Service) -> Path:
        return self.state_dir / f"{service.name}.pid"

    def log_file(self, service: Service) -> Path:
        return self.state_dir / f"{service.name}.log"

    def is_ours(self, service: Service, pid: int) -> bool:
        proc = self._procs.get(service.name)
        if proc is not None and proc.pid == pid:
            # Our own child: poll() reaps it once it exits (no zombie). Its cmdline can read
            # empty for a moment right after exec, so it is not consulted.
            return proc.poll() is None
        # Reap a child we spawned through another supervisor: a zombie never answers again.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        cmdline = _cmdline(pid)
        return cmdline is not None and all(m in cmdline for m in service.markers)

    def managed_pid(self, service: Service) -> int | None:
        # A stale pid file (process gone, or its PID recycled by another program) is removed.
        path = self.pid_file(service)
        try:
            pid = int(path.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and self.is_ours(service, pid):
            return pid
        path.unlink(missing_ok=True)
        return None

    def start(self, service: Service) -> bool:
        """Start ``service`` unless it answers; wait until it does. True if spawned now."""
        spawned, pid = self.launch(service)
        if pid is not None:
            self.wait_ready(service, pid)
        return spawned

    def launch(self, service: Service) -> tuple[bool, int | None]:
        """Start ``service`` unless it answers, without waiting for it.

        Returns whether it was spawned now and the pid to wait for (None: it answers).
        Nodes of a KRaft quorum must all be launched before any of them can answer.
        """
        if service.answers():
            return False, None
        pid = self.managed_pid(service)
        if pid is not None:
            # An own process that does not answer yet may still be starting, or be stopped
            # (SIGSTOP, a fault test): resumed, it gets the same grace as a fresh one.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            return False, pid
        service.prepare()
        return True, self._spawn(service)

    def _spawn(self, service: Service) -> int:
        # No port check here: if something else holds the port, the child exits with
        # "address in use" in its log, and wait_ready reports exactly that.
        command = service.command()
        self._procs.pop(service.name, None)  # an earlier child of this name is gone
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with self.log_file(service).open("ab") as log:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._procs[service.name] = proc
            # Write then rename, so a concurrent reader never sees a half-written pid.
            tmp = self.pid_file(service).with_suffix(".pid.tmp")
            tmp.write_text(f"{proc.pid}\n")
            tmp.replace(self.pid_file(service))
        except OSError as exc:
            # Without a pid file nothing could stop it later, so it must not outlive us.
            if (orphan := self._procs.pop(service.name, None)) is not None:
                orphan.kill()
                orphan.wait()
            raise DevStackError(
                f"could not start {service.name} ({command[0]}): {exc}; check {self.state_dir}"
            ) from exc
        return proc.pid

    def wait_ready(self, service: Service, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        log = self.log_file(service)
        while not service.answers():
            exited = not self.is_ours(service, pid)
            if exited or time.monotonic() >= deadline:
                self.stop(service)  # if it exited, this only drops the stale pid file
                t = self.start_timeout_s
                why = "exited while starting" if exited else f"did not answer within {t:g}s"
                raise DevStackError(
                    f"{service.name} {why} on {service.address}: see {log}: {log_tail(log)}"
                )
            time.sleep(_POLL_S)

    def signal(self, service: Service, sig: signal.Signals) -> int:
        """Send ``sig`` to our process of ``service``; return its pid. After SIGKILL,
        return once the process is gone: a dying node may still answer for a moment,
        and a ``start`` right after would then take it for a running one."""
        pid = self.managed_pid(service)
        if pid is None:
            raise DevStackError(f"{service.name} is not running as ours")
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + _GONE_TIMEOUT_S
            while self.is_ours(service, pid):
                if time.monotonic() > deadline:
                    raise DevStackError(f"{service.name} (pid {pid}) outlived SIGKILL")
                time.sleep(0.01)
        return pid

    def stop(self, service: Service) -> bool:
        pid = self.managed_pid(service)
        if pid is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
                # A stopped (SIGSTOP) process would hold SIGTERM until resumed.
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                break
            except OSError as exc:
                raise DevStackError(f"could not stop {service.name} (pid {pid}): {exc}") from exc
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while (alive := self.is_ours(service, pid)) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if not alive:
                break
        else:
            raise DevStackError(
                f"{service.name} (pid {pid}) survived SIGKILL: check it with `ps -p {pid}`"
            )
        self.pid_file(service).unlink(missing_ok=True)
        self._procs.pop(service.name, None)
        return True

    def status(self, service: Service) -> ServiceStatus:
        pid = self.managed_pid(service)
        running = service.answers()
        version = service.version() if running else ""
        return ServiceStatus(service.name, service.address, running, pid is not None, pid, version)
