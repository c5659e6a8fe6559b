"""The Celery app the integration tests run in a real worker subprocess.

Every task records its executions in a Redis hash named by the test (``ledger``), so a
test counts effects independently of kafcel's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun
from kombu import Exchange, Queue

from kafcel.celery import app_from_env, origin_of
from kafcel.settings import Settings

QUEUE = "kafcel-tests"


# The tests' queue is fixed: the session worker consumes it.
app = app_from_env("kafcel_tests", queue_env="KAFCEL_TESTS_QUEUE", default_queue=QUEUE)


def _queue_options() -> dict[str, Any]:
    """The RabbitMQ tests' queue: durable or not, its arguments (quorum, delivery limit),
    from ``KAFCEL_TESTS_QUEUE_OPTIONS``, a JSON object; read when Celery loads its config."""
    raw = os.environ.get("KAFCEL_TESTS_QUEUE_OPTIONS")
    if not raw:
        return {}
    arguments = json.loads(raw)
    durable = bool(arguments.pop("durable", True))
    name = os.environ.get("KAFCEL_TESTS_QUEUE", QUEUE)
    queue = Queue(
        name, Exchange(name), routing_key=name, durable=durable, queue_arguments=arguments or None
    )
    return {"task_queues": [queue]}


app.add_defaults(_queue_options)

_client: tuple[int, redis.Redis[bytes]] | None = None


def ledger() -> redis.Redis[bytes]:
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(Settings.from_env().redis_url))
    return _client[1]


def _record(name: str, item: Any, attempt: int) -> None:
    r = ledger()
    r.hincrby(f"{name}:attempts", str(item), 1)
    r.rpush(f"{name}:log", f"{item}:{attempt}")


@app.task
def record(name: str, item: Any) -> Any:
    _record(name, item, 0)
    ledger().hincrby(f"{name}:effects", str(item), 1)
    return item


@app.task(bind=True, max_retries=3, default_retry_delay=60)
def flaky_bind(self: Any, name: str, item: Any, fail_times: int) -> Any:
    """The classic shape: bind=True, max_retries, default_retry_delay, self.retry()."""
    _record(name, item, self.request.retries)
    if self.request.retries < fail_times:
        # The test cannot wait default_retry_delay (60 s); the shape is what matters.
        raise self.retry(exc=ValueError(f"attempt {self.request.retries} fails"), countdown=0.2)
    ledger().hincrby(f"{name}:effects", str(item), 1)
    return item


@app.task(
    bind=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    retry_backoff_max=1,
    retry_jitter=True,
    max_retries=4,
)
def flaky_auto(self: Any, name: str, item: Any, fail_times: int) -> Any:
    """autoretry_for + retry_backoff + retry_jitter."""
    _record(name, item, self.request.retries)
    if self.request.retries < fail_times:
        raise ConnectionError(f"attempt {self.request.retries} fails")
    ledger().hincrby(f"{name}:effects", str(item), 1)
    return item


@app.task(
    bind=True,
    autoretry_for=(RuntimeError,),
    retry_backoff=True,
    retry_backoff_max=1,
    retry_jitter=False,
    max_retries=2,
)
def always_fail(self: Any, name: str, item: Any) -> Any:
    _record(name, item, self.request.retries)
    raise RuntimeError(f"order {item} can never be processed")


@app.task(bind=True, max_retries=0)
def fails_while_broken(self: Any, name: str, item: Any) -> Any:
    """Fails while the test's ``broken`` flag is set: a bug, then its fix, then a replay."""
    _record(name, item, self.request.retries)
    if ledger().exists(f"{name}:broken"):
        raise RuntimeError(f"order {item}: the fix is not deployed yet")
    ledger().hincrby(f"{name}:effects", str(item), 1)
    return item


@app.task
def slow(name: str, item: Any, seconds: float) -> Any:
    ledger().hincrby(f"{name}:started", str(item), 1)
    time.sleep(seconds)
    ledger().hincrby(f"{name}:effects", str(item), 1)
    return item


@app.task(bind=True, max_retries=3)
def sequenced(self: Any, name: str, key: str, seq: int, seconds: float, fail: bool = False) -> int:
    """Appends seq to the key's list: the list's order is the order effects happened in.

    With ``fail`` the first attempt raises and Celery retries it: the key's next task
    must still wait for this one.
    """
    if fail and self.request.retries == 0:
        raise self.retry(exc=RuntimeError(f"{key}:{seq} fails once"), countdown=0.2)
    time.sleep(seconds)
    ledger().rpush(f"{name}:seq:{key}", seq)
    ledger().hincrby(f"{name}:effects", f"{key}:{seq}", 1)
    return seq


@app.task
def suicide(name: str, item: Any) -> None:
    """Ends its own worker process the hard way, every time."""
    _record(name, item, 0)
    os._exit(17)


@app.task(bind=True)
def echo_request(self: Any, name: str) -> dict[str, Any]:
    """What the task sees of its request: tracing headers, Celery's own, kafcel's."""
    origin = origin_of(self.request)
    return {
        "traceparent": getattr(self.request, "traceparent", None),
        "tenant": getattr(self.request, "tenant", None),
        "id": self.request.id,
        "retries": self.request.retries,
        "kafcel": origin is not None,
        "origin_headers": origin.headers if origin is not None else None,
    }


@app.task(bind=True)
def ack_probe(self: Any, name: str, label: str) -> None:
    """Records whether its own message was acknowledged while it runs (acks early) or is
    still unacknowledged after 2 s (acks late): kombu's Redis transport keeps unacked
    messages in the ``unacked`` hash."""
    mine = self.request.id.encode()
    deadline = time.monotonic() + 2.0
    verdict = "late"
    while time.monotonic() < deadline:
        if not any(mine in raw for raw in ledger().hvals("unacked")):
            verdict = "early"
            break
        time.sleep(0.05)
    ledger().hset(f"{name}:acked", label, verdict)


@app.task(bind=True)
def replaced(self: Any, name: str, item: str) -> Any:
    """Hands its work to another task with ``self.replace`` (same task id)."""
    if item == "fail":
        return self.replace(always_fail.s(name, item))
    return self.replace(record.s(name, item))


@app.task
def stamp(name: str, item: Any) -> None:
    """Records when it started (one clock: every process runs on this machine)."""
    ledger().hset(f"{name}:started", str(item), repr(time.time()))
    _record(name, item, 0)
    ledger().hincrby(f"{name}:effects", str(item), 1)


@app.task(max_retries=0)
def fails_loudly(name: str, item: Any, message_bytes: int = 0, payload: str = "") -> None:
    """Fails for good, with an exception message of ``message_bytes`` (and a request as
    large as ``payload`` makes it)."""
    _record(name, item, 0)
    raise ValueError("m" * message_bytes or f"{item} fails")


@app.task(bind=True, soft_time_limit=1)
def soft_limited(self: Any, name: str, item: Any) -> str:
    """Catches its soft time limit and finishes cleanly."""
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        ledger().hincrby(f"{name}:effects", str(item), 1)
        return "soft"
    return "slept"


@app.task(time_limit=1)
def hard_limited(name: str, item: Any) -> None:
    """Killed by its hard time limit."""
    _record(name, item, 0)
    time.sleep(10)


def _signalled(signal_name: str) -> Any:
    def receiver(sender: Any = None, args: Any = None, **_: Any) -> None:
        # Only the tests that ask for it: the first argument names their ledger.
        if args and isinstance(args[0], str) and args[0].endswith(":signals"):
            ledger().rpush(args[0], signal_name)

    return receiver


for _signal in (task_prerun, task_postrun):
    _signal.connect(_signalled(_signal.name), weak=False)
