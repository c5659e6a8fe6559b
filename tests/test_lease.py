"""No two attempts of one task id run at the same time, whatever cuts a worker off Redis.

The fault is real: worker A's once-guard talks to Redis through a TCP proxy the test
freezes (bytes stop flowing both ways, sockets stay open: a black-holed network), while
its broker and the tests' ledger stay reachable. A second copy of the same task id waits
in worker B. Each attempt appends its token to a Redis list every 50 ms, so two attempts
overlapped exactly when their tokens interleave in that list.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from kafcel.celery import HEADER
from kafcel.dev import DevStack
from kafcel.dev.procs import ManagedProcess, worker_argv
from kafcel.guard.lease import LeaseKeeper
from kafcel.guard.once import OnceGuard
from kafcel.kafka.admin import ensure_topics
from kafcel.protocol.outcome import Origin, Outcome

from .conftest import ROOT, base_env, wait_until
from .lease_app import BROKER_ENV
from .lease_app import app as lease_app

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]

LEASE_S = 2.0


class FreezableProxy:
    """A TCP proxy to one address that the test can freeze and thaw.

    Frozen, it forwards nothing and keeps every socket open; a new connection is
    accepted and then hangs too. Bytes read before the freeze wait in the proxy, as they
    would in a network that stopped delivering.
    """

    def __init__(self, *, target: tuple[str, int]) -> None:
        self._target = target
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with self._lock:
            socks, self._sockets = [self._listener, *self._sockets], []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._listener.accept()
                up = socket.create_connection(self._target)
            except OSError:
                return
            with self._lock:
                self._sockets += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            self._flowing.wait()
            if not data or self._closed.is_set():
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return


@pytest.fixture()
def proxy(stack: DevStack) -> Iterator[FreezableProxy]:
    host, port = stack.redis_url.removeprefix("redis://").split("/")[0].split(":")
    p = FreezableProxy(target=(host, int(port)))
    yield p
    p.close()


@pytest.fixture()
def ledger_client(stack: DevStack) -> Iterator[tuple[str, redis.Redis[bytes]]]:
    name = f"kafcel:test-lease:{uuid.uuid4().hex[:8]}"
    client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    yield name, client
    client.delete(f"{name}:beats", f"{name}:finished", f"{name}:gil")
    client.close()


class Workers:
    """Worker subprocesses of ``tests.lease_app``, stopped at the end of the test."""

    def __init__(self, stack: DevStack, logs_dir: Path) -> None:
        self.stack = stack
        self.logs_dir = logs_dir
        self.procs: list[ManagedProcess] = []
        run = uuid.uuid4().hex[:8]
        self.results_topic = f"lease-{run}.results"
        self.dlq_topic = f"lease-{run}.dlq"
        ensure_topics(stack.bootstrap_servers, {self.results_topic: 1, self.dlq_topic: 1})
        # This process only sends: its copy of the app needs the stack's Redis too.
        lease_app.conf.update(broker_url=stack.redis_url, result_backend=stack.redis_url)

    def start(self, name: str, *, once_guard_url: str, pool: str = "prefork") -> ManagedProcess:
        queue = f"lease-{name}-{uuid.uuid4().hex[:8]}"
        argv = worker_argv("tests.lease_app:app", queue=queue, concurrency=1, name=queue)
        env = {
            **base_env(self.stack),
            BROKER_ENV: self.stack.redis_url,
            "KAFCEL_REDIS_URL": once_guard_url,
            "KAFCEL_ONCE_LEASE_S": str(LEASE_S),
        }
        proc = ManagedProcess(
            name=f"worker {name}",
            argv=[*argv, "-P", pool],
            env=env,
            log_path=self.logs_dir / f"{queue}.log",
            cwd=ROOT,
        ).start()
        proc.queue = queue  # type: ignore[attr-defined]
        self.procs.append(proc)
        proc.wait_for_log(" ready.", timeout_s=60)
        return proc

    def send(self, proc: ManagedProcess, task_id: str, *args: object) -> None:
        """Send the task as the bridge does: the kafcel header makes the once-guard act."""
        origin = Origin(
            topic="lease-tests",
            partition=0,
            offset=0,
            results_topic=self.results_topic,
            dlq_topic=self.dlq_topic,
        )
        lease_app.send_task(
            "tests.lease_app.beating",
            args=list(args),
            task_id=task_id,
            queue=proc.queue,  # type: ignore[attr-defined]
            headers={HEADER: origin.to_header()},
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop(timeout_s=5)


@pytest.fixture()
def workers(stack: DevStack, logs_dir: Path) -> Iterator[Workers]:
    w = Workers(stack, logs_dir)
    yield w
    w.stop()


def overlaps(beats: list[bytes]) -> list[str]:
    """Attempts whose beats resume after another attempt's began: they ran at once."""
    seen: list[bytes] = []
    clashes = []
    for token in beats:
        if seen and token == seen[-1]:
            continue
        if token in seen:
            clashes.append(f"{token.decode()} beat again after {seen[-1].decode()} started")
        seen.append(token)
    return clashes


class Tripped(Exception):
    pass


class RecordingSwitch:
    """Records what the keeper asks of the process switch; tripping raises Tripped."""

    def __init__(self) -> None:
        self.armed = False
        self.arms: list[float] = []

    def arm(self, timeout_s: float) -> None:
        self.armed = True
        self.arms.append(round(timeout_s, 6))

    def disarm(self) -> None:
        self.armed = False

    def trip(self, reason: str) -> NoReturn:
        raise Tripped(reason)


class ScriptedClock:
    """Returns the given readings in turn: a request sent at one and answered at the next."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def keeper_on(
    url: str, prefix: str, clock: ScriptedClock
) -> tuple[OnceGuard, LeaseKeeper, RecordingSwitch]:
    client: redis.Redis[bytes] = redis.Redis.from_url(
        url, socket_timeout=0.3, socket_connect_timeout=0.3, retry=None
    )
    guard = OnceGuard(client=client, lease_s=30, done_ttl_s=60, prefix=prefix, clock=clock)
    switch = RecordingSwitch()
    return guard, LeaseKeeper(guard, switch=switch, thread=False), switch


@pytest.fixture()
def prefix(stack: DevStack) -> Iterator[str]:
    p = f"kafcel:test-lease:{uuid.uuid4().hex[:8]}:"
    yield p
    client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    keys = list(client.scan_iter(match=p + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_a_lease_is_dated_from_when_its_request_was_sent(stack: DevStack, prefix: str) -> None:
    # Claim sent at 100; held at 100.5; renewal sent at 110, answered at 114.
    guard, keeper, switch = keeper_on(stack.redis_url, prefix, ScriptedClock(100, 100.5, 110, 114))
    claim = guard.claim("id")
    assert claim.acquired and claim.leased_at == 100
    keeper.hold("id", claim.leased_at)
    keeper.renew_now()
    # Given up 27 s (90 % of the 30 s lease) after each send, not after each answer.
    assert switch.arms == [100 + 27 - 100.5, 110 + 27 - 114]


def test_a_keeper_cut_off_from_redis_leaves_the_switch_to_fire(
    stack: DevStack, prefix: str, proxy: FreezableProxy
) -> None:
    url = f"redis://127.0.0.1:{proxy.port}/0"
    guard, keeper, switch = keeper_on(url, prefix, ScriptedClock(100, 100, 110, 111, 120, 121))
    keeper.hold("id", guard.claim("id").leased_at)
    proxy.freeze()
    keeper.renew_now()  # times out: the switch keeps its deadline (127), nothing else
    assert switch.armed and switch.arms == [27]
    proxy.thaw()
    keeper.renew_now()
    assert switch.arms == [27, 120 + 27 - 121]


def test_a_lease_taken_by_another_attempt_is_given_up_at_once(stack: DevStack, prefix: str) -> None:
    guard, keeper, _ = keeper_on(stack.redis_url, prefix, ScriptedClock(100, 100, 110))
    keeper.hold("id", guard.claim("id").leased_at)
    client: redis.Redis[bytes] = redis.Redis.from_url(stack.redis_url)
    client.set(prefix + "id", b"running:someone-else:1:abc")
    with pytest.raises(Tripped, match="another attempt holds id"):
        keeper.renew_now()
    assert client.get(prefix + "id") == b"running:someone-else:1:abc"


def test_an_idle_keeper_disarms_its_switch(stack: DevStack, prefix: str) -> None:
    guard, keeper, switch = keeper_on(stack.redis_url, prefix, ScriptedClock(100, 100))
    keeper.hold("id", guard.claim("id").leased_at)
    with keeper.letting_go("id"):
        assert guard.finish(Outcome(task_id="id", task="t", status="SUCCESS"))
    assert switch.armed  # kept for a next task: re-arming starts a thread
    keeper.renew_now()
    assert not switch.armed


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_worker_cut_off_from_redis_gives_its_attempt_up_before_another_starts(
    proxy: FreezableProxy,
    workers: Workers,
    stack: DevStack,
    ledger_client: tuple[str, redis.Redis[bytes]],
    pool: str,
) -> None:
    name, client = ledger_client
    cut_off = workers.start("a", once_guard_url=f"redis://127.0.0.1:{proxy.port}/0", pool=pool)
    other = workers.start("b", once_guard_url=stack.redis_url)
    task_id = f"lease-{uuid.uuid4().hex}"
    # A's attempt would beat for 30 s: well past its 2 s lease, were it not given up.
    workers.send(cut_off, task_id, name, 30.0)
    wait_until(lambda: client.llen(f"{name}:beats") > 0, 30, "A's attempt running")
    proxy.freeze()
    # A second copy of the id (a redispatch, a re-read record) reaches worker B; it runs
    # once A's lease is free, for 1 s.
    workers.send(other, task_id, name, 1.0)
    finished = wait_until(
        lambda: client.lrange(f"{name}:finished", 0, -1), 40, "an attempt that finished"
    )
    beats = client.lrange(f"{name}:beats", 0, -1)
    assert overlaps(beats) == [], f"two attempts ran at once; finished: {finished}"
    assert len(finished) == 1


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_task_holding_the_gil_past_its_lease_is_given_up(
    workers: Workers,
    stack: DevStack,
    ledger_client: tuple[str, redis.Redis[bytes]],
    pool: str,
) -> None:
    name, client = ledger_client
    # Redis is reachable, but the lease keeper's thread cannot run for 3 leases.
    holder = workers.start("a", once_guard_url=stack.redis_url, pool=pool)
    other = workers.start("b", once_guard_url=stack.redis_url)
    task_id = f"lease-{uuid.uuid4().hex}"
    workers.send(holder, task_id, name, 0.5, 3 * LEASE_S)
    wait_until(lambda: client.llen(f"{name}:beats") > 0, 30, "A's attempt running")
    workers.send(other, task_id, name, 1.0)
    wait_until(lambda: client.lrange(f"{name}:finished", 0, -1), 40, "an attempt that finished")

    def settled() -> bool:
        # A's attempt either comes back from its GIL hold or its process is gone.
        beats = client.lrange(f"{name}:beats", 0, -1)
        return (
            bool(overlaps(beats))
            or client.llen(f"{name}:finished") > 1
            or (not holder.alive() or "exited with 'exitcode" in holder.tail(200))
        )

    wait_until(settled, 30, "A's attempt back or given up")
    assert overlaps(client.lrange(f"{name}:beats", 0, -1)) == []
    assert client.llen(f"{name}:finished") == 1


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_a_worker_on_a_green_pool_is_refused_at_start(stack: DevStack, pool: str) -> None:
    # gevent and eventlet need not be installed: the refusal comes before the pool loads.
    code = (
        "import sys; from tests.lease_app import app; "
        "app.Worker(pool_cls=sys.argv[1], concurrency=1, without_gossip=True, "
        "without_mingle=True, without_heartbeat=True, queues=['lease-refused']).start()"
    )
    env = {**base_env(stack), BROKER_ENV: stack.redis_url}
    out = subprocess.run(
        [sys.executable, "-c", code, pool],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert pool in last and "prefork" in last and "kafcel" in last, out.stderr[-2000:]
