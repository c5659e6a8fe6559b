"""The processes a chaos scenario runs and hurts: its own broker, Redis, workers, bridges.

:class:`ChaosStack` owns the services (the Kafka broker — Apache Kafka, or Tansu with
``broker="tansu"`` — and the Celery/once-guard Redis through a
:class:`~kafcel.dev.DevStack` on free ports, plus a second Redis for the ledger that
no fault touches). :class:`KafcelRig` runs one scenario's workers and bridges on that
stack, each a subprocess this process started and stops by PID.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from ..dev import DevStack, free_ports
from ..dev.procs import ManagedProcess, bridge_argv, worker_argv
from ..settings import Settings
from ..worker.consume import CONSUME_FLAG
from .netlab import Netns
from .tasks import LEDGER_ENV

__all__ = ["APP", "ChaosStack", "KafcelRig"]

APP = "kafcel.chaos.app:app"


class ChaosStack:
    """``broker``: ``kafka`` (Apache Kafka, ``brokers`` KRaft nodes: 1, or 3 with
    replication 3 and ``min.insync.replicas=2``) or ``tansu``. Apache Kafka's jars are
    taken from ``cache_dir`` (fetched there once when absent). ``host``: the address
    every service listens on and advertises (a NetLab's, for network partitions)."""

    def __init__(
        self,
        *,
        state_dir: Path,
        broker: str = "kafka",
        brokers: int = 1,
        cache_dir: Path | str = ".kafcel/kafka",
        host: str = "127.0.0.1",
    ) -> None:
        self.state_dir = state_dir
        # Every port picked free at once: Apache Kafka's controller ports must not be
        # guessed next to the client port, where another service may already listen.
        redis_port, ledger_port, *kafka_ports = free_ports(2 + 2 * brokers)
        self.devstack = DevStack(
            host=host,
            broker=broker,
            brokers=brokers,
            kafka_port=kafka_ports[0],
            kafka_ports=kafka_ports if broker == "kafka" else (),
            redis_port=redis_port,
            state_dir=state_dir / "stack",
            cache_dir=cache_dir,
        )
        # Celery's broker for the rows that ask for RabbitMQ: started by the first of them.
        self.rabbitmq = DevStack(
            host=host,
            kafka_ports=kafka_ports[:2],
            rabbitmq_ports=free_ports(3),
            state_dir=state_dir / "rabbitmq",
            services=("rabbitmq",),
        )
        self.rabbitmq_started = False
        self.faults: list[str] = []
        self._since = time.monotonic()
        # Its own Redis: no fault of the suite touches the evidence.
        self.ledger = DevStack(
            host=host,
            kafka_ports=kafka_ports[:2],
            redis_port=ledger_port,
            state_dir=state_dir / "ledger",
            services=("redis",),
        )

    @property
    def bootstrap_servers(self) -> str:
        return self.devstack.bootstrap_servers

    @property
    def redis_url(self) -> str:
        return self.devstack.redis_url

    @property
    def ledger_url(self) -> str:
        return self.ledger.redis_url

    @property
    def broker(self) -> str:
        """``kafka`` or ``tansu``, as :class:`~kafcel.dev.DevStack` names them."""
        return self.devstack.broker

    def broker_label(self) -> str:
        """What the running broker is, e.g. ``apache-kafka 4.4.0`` or ``tansu 0.6.0``."""
        return self.devstack.broker_label()

    def up(self) -> None:
        self.devstack.up()
        self.ledger.up()

    def celery_broker_url(self, kind: str) -> str:
        """Celery's broker of a row: ``redis`` (the stack's) or ``rabbitmq``, started now
        if it is not yet."""
        if kind == "redis":
            return self.redis_url
        if not self.rabbitmq_started:
            self.rabbitmq.up()
            self.rabbitmq_started = True
        return self.rabbitmq.rabbitmq_url

    def celery_broker_label(self, kind: str) -> str:
        """e.g. ``redis 7.0.15`` or ``rabbitmq 3.10.8``."""
        stack, name = (
            (self.rabbitmq, "rabbitmq") if kind == "rabbitmq" else (self.devstack, "redis")
        )
        found = [s.version for s in stack.status() if s.name == name and s.version]
        return found[0] if found else kind

    def restart_rabbitmq(self) -> None:
        """kill -9 RabbitMQ and start it again from its data directory."""
        self.rabbitmq.kill("rabbitmq", signal.SIGKILL)
        self.rabbitmq.start("rabbitmq")

    def note(self, event: str) -> None:
        """Log a fault as it is injected, with the seconds since the scenario started:
        the row shows what struck and when, so a pass is seen to have been tested."""
        self.faults.append(f"{time.monotonic() - self._since:.1f}s {event}")

    def begin(self) -> None:
        """A scenario starts: its fault log starts empty, its clock at 0."""
        self.faults = []
        self._since = time.monotonic()

    def env(self, settings: Settings) -> dict[str, str]:
        """The environment of a worker or bridge on this stack: ``settings`` as
        ``KAFCEL_*`` (none inherited from this process) and the ledger's URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFCEL_")}
        env.update(settings.as_env())
        env[LEDGER_ENV] = self.ledger_url
        return env

    def flush_redis(self) -> None:
        redis.Redis.from_url(self.redis_url).flushall()

    def restart_redis(self) -> None:
        """Stop the Celery Redis (its data goes: no persistence) and start it again."""
        self.devstack.stop_started(["redis"])
        self.devstack.up()

    def down(self) -> None:
        self.ledger.down()
        self.rabbitmq.down()
        self.devstack.down()


class KafcelRig:
    """Workers and bridges of one scenario, on its own topic, group and Celery queue.
    ``consume``: the workers consume the task topic themselves (path B), no bridge."""

    def __init__(
        self,
        *,
        stack: ChaosStack,
        settings: Settings,
        log_dir: Path,
        consume: bool = False,
        celery_broker: str = "redis",
    ) -> None:
        self.consume = consume
        self.celery_broker_url = stack.celery_broker_url(celery_broker)
        self.stack = stack
        self.settings = settings
        self.log_dir = log_dir
        self.queue = f"chaos-{settings.topic}"
        self.workers: list[ManagedProcess] = []
        self.bridges: list[ManagedProcess] = []
        # The namespace each slot runs in, kept by its restarts: ("worker" | "bridge", n).
        self.netns: dict[tuple[str, int], Netns] = {}

    def env(self) -> dict[str, str]:
        # CELERY_BROKER_URL: Celery's own variable, which wins over the app's broker_url.
        return {
            **self.stack.env(self.settings),
            "KAFCEL_CHAOS_QUEUE": self.queue,
            "CELERY_BROKER_URL": self.celery_broker_url,
        }

    def start_worker(
        self, index: int | None = None, *, concurrency: int = 2, netns: Netns | None = None
    ) -> ManagedProcess:
        n = len(self.workers) if index is None else index
        argv = worker_argv(APP, queue=self.queue, concurrency=concurrency, name=f"chaos{n}")
        if self.consume:
            argv.append(CONSUME_FLAG)
        argv = self._placed("worker", n, netns, argv)
        return self._start(self.workers, index, f"worker {n}", argv, f"worker{n}.log", " ready.")

    def start_bridge(
        self, index: int | None = None, *, netns: Netns | None = None
    ) -> ManagedProcess:
        n = len(self.bridges) if index is None else index
        argv = self._placed("bridge", n, netns, bridge_argv(APP))
        return self._start(
            self.bridges, index, f"bridge {n}", argv, f"bridge{n}.log", "bridge started"
        )

    @property
    def consumers(self) -> tuple[str, list[ManagedProcess]]:
        """What reads the task topic: ``("bridge", bridges)`` or, consuming, the workers."""
        return ("worker", self.workers) if self.consume else ("bridge", self.bridges)

    def _placed(self, kind: str, n: int, netns: Netns | None, argv: list[str]) -> list[str]:
        """``argv`` inside the slot's namespace: ``netns``, else the one it ran in before."""
        if netns is not None:
            self.netns[(kind, n)] = netns
        placed = self.netns.get((kind, n))
        return argv if placed is None else placed.argv(argv)

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
        mark = proc.log_size()  # a restart appends to the same log
        proc.start()
        proc.wait_for_log(ready, timeout_s=60, after=mark)
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

    def kill_worker(self, index: int = 0, *, sig: int = signal.SIGKILL) -> None:
        """SIGKILL the worker's main process and its prefork children at once; SIGTERM
        the main process (Celery's warm shutdown) and wait until it has finished."""
        proc = self.workers[index]
        if sig == signal.SIGKILL:
            proc.signal(signal.SIGKILL, group=True)
            proc.stop(timeout_s=5)
            return
        s = self.settings
        # stop() sends the one SIGTERM (a second would not make the shutdown warmer).
        proc.stop(timeout_s=s.drain_timeout_s + 2 * s.session_timeout_s + 25)

    def stop(self) -> None:
        for proc in self.bridges:
            proc.stop(timeout_s=self.settings.drain_timeout_s + 15)
        for proc in self.workers:
            proc.stop(timeout_s=20)
