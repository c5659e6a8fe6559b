"""A Celery worker under pyinstrument, thread by thread and process by process.

``python -m benchmarks.profiled_worker DIR <celery arguments>`` runs ``celery <celery
arguments>`` with one profiler per place where a path B worker spends its time, each
written to ``DIR`` when it ends: the main thread (Celery's event loop: the hand-off,
the strategy, the pool's pipes), the consuming thread (the bridge's loop, path B only)
and each pool process (the task and kafcel's wrapper around it); a tree and a flat
report of each. They sample wall time: the waits (``epoll.poll``, ``Consumer.consume``,
a pipe's ``read``) are idle time, the rest is where the CPU goes.

pyinstrument samples only the thread that started it, so each of those starts its own.
The main thread's profiler starts when the worker is ready, after the pool processes
were forked: a fork would copy a running profiler into them.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready
from pyinstrument import Profiler

from kafcel.worker import consume

_INTERVAL_S = 0.0005


def _profiled(name: str, out: Path) -> Callable[[], None]:
    """Start profiling this thread; the returned call stops and writes the reports."""
    profiler = Profiler(interval=_INTERVAL_S, async_mode="disabled")
    profiler.start()

    def write() -> None:
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        (out / f"{name}.txt").write_text(str(text))
        # The tree hides library frames (Celery's, redis-py's): the flat view names the
        # functions the time is spent in, theirs included. (A saved session is 10-80 MB.)
        flat = profiler.output_text(unicode=True, color=False, flat=True)
        (out / f"{name}-flat.txt").write_text(str(flat))

    return write


def install(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ends: dict[str, Callable[[], None]] = {}

    def on_ready(**_: Any) -> None:
        ends["main"] = _profiled("main-thread", out)

    def on_child(**_: Any) -> None:
        ends[f"child-{os.getpid()}"] = _profiled(f"pool-process-{os.getpid()}", out)

    def on_child_end(**_: Any) -> None:
        end = ends.pop(f"child-{os.getpid()}", None)
        if end is not None:
            end()

    def on_exit() -> None:
        end = ends.pop("main", None)
        if end is not None and threading.current_thread() is threading.main_thread():
            end()

    worker_ready.connect(on_ready, weak=False)
    worker_process_init.connect(on_child, weak=False)
    worker_process_shutdown.connect(on_child_end, weak=False)
    atexit.register(on_exit)

    original = consume._Consuming._run

    def run(self: Any) -> None:
        end = _profiled("consuming-thread", out)
        try:
            original(self)
        finally:
            end()

    consume._Consuming._run = run  # type: ignore[method-assign]


def main() -> None:
    out = Path(sys.argv[1])
    install(out)
    sys.argv = ["celery", *sys.argv[2:]]
    from celery.__main__ import main as celery

    celery()


if __name__ == "__main__":
    main()
