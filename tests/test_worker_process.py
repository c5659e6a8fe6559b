"""A worker process's clients under the threads pool: several task threads reach for
them at once, and every one of them must get the same once-guard."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kafcel.guard.once import OnceGuard
from kafcel.settings import Settings
from kafcel.worker import WorkerProcess

pytestmark = pytest.mark.timeout(30)


def test_two_threads_creating_the_clients_at_once_share_one_once_guard() -> None:
    """The threads pool's first two tasks: one thread is inside the client set-up when the
    second asks for the guard. Two guards would mean two owner tokens, and the task that
    claimed its id with one would find the id "held by another attempt" at its end."""
    first_inside, release_first = threading.Event(), threading.Event()
    calls: list[int] = []

    def new_producer(config: dict[str, Any]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            first_inside.set()
            release_first.wait(10)
        return object()

    state = WorkerProcess(
        Settings(bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"),
        new_producer=new_producer,
    )
    got: dict[str, OnceGuard] = {}
    second_done = threading.Event()

    def second() -> None:
        got["second"] = state.guard
        second_done.set()

    a = threading.Thread(target=lambda: got.__setitem__("first", state.guard))
    a.start()
    assert first_inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    # Without a lock the second thread builds clients of its own and returns at once;
    # with one it waits for the first.
    second_done.wait(1.0)
    release_first.set()
    a.join(10)
    b.join(10)
    assert got["first"] is got["second"]
    assert len(calls) == 1
