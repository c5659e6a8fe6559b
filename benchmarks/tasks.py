"""The trivial tasks every benchmark runs, and where they report.

Each task adds one to a counter (or pushes its start delay) in the bench's own Redis,
named by the run, so every system is timed by the same single Redis round trip per task.
That Redis is the chaos suite's ledger server (``KAFCEL_CHAOS_LEDGER_URL``), not the
broker's, and its URL is read when a task first runs.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from kafcel.chaos.tasks import LEDGER_ENV

__all__ = ["counter_key", "latency_key", "register"]

_clients: dict[int, redis.Redis] = {}


def _tally() -> redis.Redis:
    # One client per process: prefork children must not share their parent's socket.
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(os.environ[LEDGER_ENV])
    return client


def counter_key(run: str) -> str:
    return f"bench:{run}:done"


def latency_key(run: str) -> str:
    return f"bench:{run}:latency"


def register(app: Celery) -> None:
    """The bench's tasks on ``app`` alone (two apps may share a process)."""

    @app.task(name="bench.noop", shared=False)
    def noop(run: str, n: int) -> None:
        _tally().incr(counter_key(run))

    @app.task(name="bench.blob", shared=False)
    def blob(run: str, n: int, payload: str) -> None:
        # A large record's task: what counts is the bridge holding the payload.
        _tally().incr(counter_key(run))

    @app.task(name="bench.stamp", shared=False)
    def stamp(run: str, sent_at: float) -> None:
        # Submit-to-start delay; time.time() is one clock for every process here.
        _tally().rpush(latency_key(run), time.time() - sent_at)
