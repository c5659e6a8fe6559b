"""The Celery app of the lease tests (``tests/test_lease.py``), run in worker subprocesses.

Its broker, result backend and the tests' ledger are on ``KAFCEL_TESTS_BROKER_URL``, while
kafcel's once-guard uses ``KAFCEL_REDIS_URL``: a test can route one worker's once-guard
through a proxy it freezes, and that worker keeps its broker and its ledger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
import uuid

import redis
from celery import Celery

from kafcel.celery import install

BROKER_ENV = "KAFCEL_TESTS_BROKER_URL"


def _broker_url() -> str:
    return os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0")


class _Config:
    """Read on first use of ``app.conf``, in the worker, not at import."""

    @property
    def broker_url(self) -> str:
        return _broker_url()

    @property
    def result_backend(self) -> str:
        return _broker_url()

    broker_connection_retry_on_startup = True
    worker_hijack_root_logger = False


app = Celery("kafcel_lease_tests")
app.config_from_object(_Config())
install(app)

_client: tuple[int, redis.Redis[bytes]] | None = None


def ledger() -> redis.Redis[bytes]:
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(_broker_url()))
    return _client[1]


def _hold_gil(seconds: float) -> None:
    """Sleep inside a C call that keeps the GIL (ctypes.PyDLL does not release it), as a
    long computation in a C extension does: no other thread of the process runs."""
    libc = ctypes.PyDLL(ctypes.util.find_library("c"))
    libc.usleep(ctypes.c_uint(int(seconds * 1_000_000)))


@app.task
def beating(name: str, seconds: float, hold_gil_s: float = 0.0) -> str:
    """Appends this attempt's token to ``<name>:beats`` every 50 ms for ``seconds``: two
    attempts ran at the same time exactly when their tokens interleave in that list."""
    r = ledger()
    me = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
    r.rpush(f"{name}:beats", me)
    # Only the first attempt anywhere: a rerun holding it again would be given up again,
    # up to max_attempts, while the test waits for an attempt that finishes.
    if hold_gil_s and r.set(f"{name}:gil", 1, nx=True):
        _hold_gil(hold_gil_s)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r.rpush(f"{name}:beats", me)
        time.sleep(0.05)
    r.rpush(f"{name}:beats", me)
    r.rpush(f"{name}:finished", me)
    return me
