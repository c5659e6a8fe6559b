"""Subprocesses the demo and the tests start: a Celery worker and a kafcel bridge.

Each runs in its own session so Ctrl-C in the terminal reaches only us, and we stop it
ourselves by its PID (and its process group, for Celery's prefork children).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import KafcelError

__all__ = ["ManagedProcess", "bridge_argv", "worker_argv"]


def worker_argv(
    app: str, *, queue: str, concurrency: int = 2, name: str = "kafcel", log_level: str = "INFO"
) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", queue, "-c", str(concurrency), "-n", f"{name}@%h", "-l", log_level,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def bridge_argv(app: str, *, log_level: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "kafcel", "bridge", "-A", app, "--log-level", log_level]


class ManagedProcess:
    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise KafcelError(f"{self.name} is not started")
        return self.proc.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.cwd,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        """Bytes in the log so far: pass as ``after`` to wait for what a restart writes."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_for_log(self, text: str, timeout_s: float = 60.0, *, after: int = 0) -> None:
        """Wait until the log holds ``text`` past byte ``after``; raise if the process exits."""
        deadline = time.monotonic() + timeout_s
        needle = text.encode()
        while time.monotonic() < deadline:
            if self.log_path.exists():
                with self.log_path.open("rb") as f:
                    f.seek(after)
                    if needle in f.read():
                        return
            if not self.alive():
                raise KafcelError(f"{self.name} exited early:\n{self.tail()}")
            time.sleep(0.1)
        raise KafcelError(
            f"{self.name} did not log {text!r} within {timeout_s:.0f}s:\n{self.tail()}"
        )

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int, *, group: bool = False) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL, group=True)
                self.proc.wait(10)
        # Children of a prefork pool that outlived their parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode
