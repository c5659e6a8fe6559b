"""The processes a chaos scenario runs and hurts: its own Redis, Tansu, workers, bridges.

:class:`ChaosStack` owns the services (Tansu and the Celery/once-guard Redis through a
:class:`~kafcel.devstack.DevStack` on free ports, plus a second Redis for the ledger that
no fault touches). :class:`KafcelRig` runs one scenario's workers and bridges on that
stack, each a subprocess this process started and stops by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from ..devstack import DevStack
from ..errors import DevStackError
from ..procs import ManagedProcess, bridge_argv, worker_argv
from ..settings import Settings
from .tasks import LEDGER_ENV

__all__ = ["APP", "ChaosStack", "KafcelRig", "free_port"]

APP = "kafcel.chaos.app:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChaosStack:
    def __init__(self, *, state_dir: Path) -> None:
        self.state_dir = state_dir
        kafka_port, redis_port, ledger_port = free_port(), free_port(), free_port()
        while len({kafka_port, redis_port, ledger_port}) < 3:
            ledger_port = free_port()
        self.devstack = DevStack(
            kafka_port=kafka_port, redis_port=redis_port, state_dir=state_dir / "stack"
        )
        self.ledger_port = ledger_port
        self._ledger: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return self.devstack.bootstrap_servers

    @property
    def redis_url(self) -> str:
        return self.devstack.redis_url

    @property
    def ledger_url(self) -> str:
        return f"redis://127.0.0.1:{self.ledger_port}/0"

    def up(self) -> None:
        self.devstack.up()
        server = shutil.which("redis-server")
        if server is None:
            raise DevStackError("redis-server not found: run `make setup`")
        log = (self.state_dir / "ledger-redis.log").open("ab")
        self._ledger = subprocess.Popen(
            [server, "--port", str(self.ledger_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        client: redis.Redis[bytes] = redis.Redis(port=self.ledger_port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline or self._ledger.poll() is not None:
                    raise DevStackError(f"ledger Redis did not start: {exc}") from exc
                time.sleep(0.1)

    def flush_redis(self) -> None:
        redis.Redis.from_url(self.redis_url).flushall()

    def restart_redis(self) -> None:
        """Stop the Celery Redis (its data goes: no persistence) and start it again."""
        self.devstack.stop_started(["redis"])
        self.devstack.up()

    def down(self) -> None:
        if self._ledger is not None and self._ledger.poll() is None:
            self._ledger.terminate()
            try:
                self._ledger.wait(10)
            except subprocess.TimeoutExpired:
                self._ledger.kill()
                self._ledger.wait(5)
        self.devstack.down()


class KafcelRig:
    """Workers and bridges of one scenario, on its own topic, group and Celery queue."""

    def __init__(self, *, stack: ChaosStack, settings: Settings, log_dir: Path) -> None:
        self.stack = stack
        self.settings = settings
        self.log_dir = log_dir
        self.queue = f"chaos-{settings.topic}"
        self.workers: list[ManagedProcess] = []
        self.bridges: list[ManagedProcess] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFCEL_")}
        env.update(self.settings.as_env())
        env[LEDGER_ENV] = self.stack.ledger_url
        env["KAFCEL_CHAOS_QUEUE"] = self.queue
        return env

    def start_worker(self, index: int | None = None, *, concurrency: int = 2) -> ManagedProcess:
        n = len(self.workers) if index is None else index
        argv = worker_argv(APP, queue=self.queue, concurrency=concurrency, name=f"chaos{n}")
        return self._start(self.workers, index, f"worker {n}", argv, f"worker{n}.log", " ready.")

    def start_bridge(self, index: int | None = None) -> ManagedProcess:
        n = len(self.bridges) if index is None else index
        return self._start(
            self.bridges, index, f"bridge {n}", bridge_argv(APP), f"bridge{n}.log", "bridge started"
        )

    def _start(
        self,
        procs: list[ManagedProcess],
        index: int | None,
        name: str,
        argv: list[str],
        log_name: str,
        ready: str,
    ) -> ManagedProcess:
        """Start a process (a new one, or again in slot ``index``); wait for ``ready``."""
        log_path = self.log_dir / log_name
        proc = ManagedProcess(name=name, argv=argv, env=self.env(), log_path=log_path)
        mark = _log_size(proc.log_path)
        proc.start()
        _wait_for_log_after(proc, mark, ready, timeout_s=60)
        if index is None:
            procs.append(proc)
        else:
            procs[index] = proc
        return proc

    def kill_bridge(self, index: int = 0, *, sig: int = signal.SIGKILL) -> None:
        proc = self.bridges[index]
        proc.signal(sig)
        if sig == signal.SIGKILL:
            proc.stop(timeout_s=5)
        else:
            # SIGTERM drains, then finishes a pending group join: give it both and a margin.
            s = self.settings
            proc.stop(timeout_s=s.drain_timeout_s + 2 * s.session_timeout_s + 25)

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL the worker's main process and its prefork children at once."""
        proc = self.workers[index]
        proc.signal(signal.SIGKILL, group=True)
        proc.stop(timeout_s=5)

    def stop(self) -> None:
        for proc in self.bridges:
            proc.stop(timeout_s=self.settings.drain_timeout_s + 15)
        for proc in self.workers:
            proc.stop(timeout_s=20)


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_for_log_after(proc: ManagedProcess, offset: int, text: str, timeout_s: float) -> None:
    """Like ``wait_for_log``, but only in what a restarted process wrote after ``offset``."""
    deadline = time.monotonic() + timeout_s
    needle = text.encode()
    while time.monotonic() < deadline:
        with proc.log_path.open("rb") as f:
            f.seek(offset)
            if needle in f.read():
                return
        if not proc.alive():
            raise DevStackError(f"{proc.name} exited early:\n{proc.tail()}")
        time.sleep(0.1)
    raise DevStackError(f"{proc.name} did not log {text!r} in {timeout_s:.0f}s:\n{proc.tail()}")
