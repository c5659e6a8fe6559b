"""The processes a benchmark runs: its own broker and Redis, workers (plain, or consuming
the task topic themselves: path B) and bridges.

Everything runs on one :class:`~kafcel.chaos.rig.ChaosStack` (Apache Kafka, or Tansu,
and the Celery Redis on free ports, plus a second Redis the tasks report to), so the
bench never touches a Redis or Kafka it did not start. Each measurement gets its own
topic, group, Celery queue and tally keys.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil
import redis

from kafcel.chaos.kombu_kafka import KombuKafka
from kafcel.chaos.rig import ChaosStack
from kafcel.chaos.tasks import LEDGER_ENV
from kafcel.dev.procs import ManagedProcess, bridge_argv, worker_argv
from kafcel.settings import Settings
from kafcel.worker.consume import CONSUME_FLAG

__all__ = [
    "APP",
    "KOMBU_APP",
    "PARTITIONS",
    "BenchRig",
    "cpu_s",
    "peak_rss_mb",
    "processes",
    "wait_for",
]

APP = "benchmarks.app:app"
KOMBU_APP = "benchmarks.kombu_app:app"
PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[1]


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float, what: str, every_s: float = 0.005
) -> float:
    """Poll ``condition`` until true; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(every_s)


def processes(rig: BenchRig, **named: ManagedProcess | None) -> dict[str, psutil.Process]:
    """The processes that share the machine's cores during a measurement, by role."""
    found = {"bench (submitter)": psutil.Process()}
    for name, proc in named.items():
        if proc is not None and proc.alive():
            main = psutil.Process(proc.pid)
            found[name] = main
            for i, child in enumerate(main.children(recursive=True)):
                found[f"{name} child {i}"] = child
    # The stack's own services, by the PIDs it started them with. The Kafka broker's row
    # is named by what it is ("apache-kafka", "tansu"), a node past the first by its name.
    kind = rig.broker_label.split()[0]
    for service in rig.stack.devstack.status():
        if service.pid is None:
            continue
        if service.name == "redis":
            role = "redis (broker)"
        else:
            role = kind if service.name in ("kafka", "tansu") else f"{kind} {service.name}"
        found[role] = psutil.Process(service.pid)
    for service in rig.stack.ledger.status():
        if service.pid is not None:
            found["redis (tally)"] = psutil.Process(service.pid)
    if rig.stack.rabbitmq_started:
        for service in rig.stack.rabbitmq.status():
            if service.pid is not None and service.name == "rabbitmq":
                found["rabbitmq (broker)"] = psutil.Process(service.pid)
    return found


def cpu_s(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    out = {}
    for name, p in procs.items():
        try:
            times = p.cpu_times()
            out[name] = times.user + times.system
        except psutil.NoSuchProcess:
            out[name] = -1.0
    return out


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class BenchRig:
    """``broker``: ``kafka`` (Apache Kafka, one KRaft node) or ``tansu``."""

    def __init__(self, *, state_dir: Path, broker: str = "kafka") -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.stack = ChaosStack(state_dir=state_dir, broker=broker)
        self.broker_label = ""
        self._procs: list[ManagedProcess] = []
        self._kombu: list[KombuKafka] = []

    def up(self) -> None:
        self.stack.up()
        # e.g. "apache-kafka 4.4.0": read from the running broker's jar or binary.
        self.broker_label = self.stack.broker_label()
        # Workers import benchmarks.* from the source tree.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        os.environ[LEDGER_ENV] = self.stack.ledger_url
        os.environ["KAFCEL_REDIS_URL"] = self.stack.redis_url

    def down(self) -> None:
        for kombu in self._kombu:
            kombu.stop()
        for proc in reversed(self._procs):
            proc.stop(timeout_s=20)
        self.stack.down()
        # Apache Kafka keeps every record on disk, over a GB after a full run: the state
        # directory keeps the logs, not the brokers' data (kafka-<node>-data).
        for data in (self.state_dir / "stack").glob("*-data"):
            shutil.rmtree(data, ignore_errors=True)

    @functools.cached_property
    def tally(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.ledger_url)

    @functools.cached_property
    def broker(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.redis_url)

    def settings(self, run: str, **changes: object) -> Settings:
        """Settings of one measurement: its own topics and group, created now."""
        s = Settings(
            bootstrap_servers=self.stack.bootstrap_servers,
            redis_url=self.stack.redis_url,
            topic=f"bench-{run}",
            results_topic=f"bench-{run}-results",
            dlq_topic=f"bench-{run}-dlq",
            group_id=f"bench-{run}",
            partitions=PARTITIONS,
        ).replace(**changes)
        self.stack.devstack.ensure_topics(
            {t: PARTITIONS for t in (s.topic, s.results_topic, s.dlq_topic)}
        )
        return s

    def worker(
        self,
        settings: Settings,
        queue: str,
        *,
        concurrency: int,
        consume: bool = False,
        profile: Path | None = None,
        celery_broker_url: str | None = None,
        app: str = APP,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """A Celery worker of ``app`` (the bench's) on ``queue`` (``-Q``: one queue, or
        several comma separated; Celery's broker: the stack's Redis, or
        ``celery_broker_url``), ``env`` added to its environment; with ``consume`` the same
        command plus ``--kafcel-consume`` (path B: it reads ``settings.topic`` itself),
        returning once it holds its partitions, so a timed run does not count the join.
        With ``profile``, under pyinstrument (:mod:`benchmarks.profiled_worker`), its
        reports written to that directory when it stops."""
        name = f"{'c' if consume else 'w'}{uuid.uuid4().hex[:6]}"
        argv = worker_argv(app, queue=queue, concurrency=concurrency, name=name, log_level="INFO")
        if profile is not None:
            argv = [sys.executable, "-m", "benchmarks.profiled_worker", str(profile), *argv[3:]]
        broker = celery_broker_url
        if not consume:
            return self._start(
                name, argv, settings, queue, " ready.", celery_broker_url=broker, env=env
            )
        argv = [*argv, CONSUME_FLAG]
        proc = self._start(
            name, argv, settings, queue, " ready.", celery_broker_url=broker, env=env
        )
        proc.wait_for_log("assigned: [(", timeout_s=120)
        return proc

    def bridge(
        self,
        settings: Settings,
        queue: str,
        *,
        profile: Path | None = None,
        celery_broker_url: str | None = None,
        app: str = APP,
        env: Mapping[str, str] | None = None,
        lanes: Sequence[str] = (),
    ) -> ManagedProcess:
        """A bridge of ``app`` (the bench's), ``env`` added to its environment, returning
        once it holds its partitions: each of ``lanes``' topics' when it reads several."""
        argv = bridge_argv(app, log_level="INFO")
        if profile is not None:
            # pyinstrument samples the bridge's own process and writes when it exits.
            argv = [sys.executable, "-m", "pyinstrument", "-o", str(profile), "-m", *argv[2:]]
        proc = self._start(
            f"bridge-{settings.group_id}",
            argv,
            settings,
            queue,
            "bridge started",
            celery_broker_url=celery_broker_url,
            env=env,
        )
        # Timed runs start once the bridge holds its partitions, not during the join.
        for needle in [f"assigned: [('{topic}'," for topic in lanes] or ["assigned: [("]:
            proc.wait_for_log(needle, timeout_s=120)
        return proc

    def _start(
        self,
        name: str,
        argv: list[str],
        settings: Settings,
        queue: str,
        ready: str,
        *,
        celery_broker_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        full = {**self.stack.env(settings), "KAFCEL_BENCH_QUEUE": queue, **(env or {})}
        if celery_broker_url is not None:
            full["CELERY_BROKER_URL"] = celery_broker_url  # Celery's own; wins over the app's
        proc = ManagedProcess(name=name, argv=argv, env=full, log_path=self.log_dir / f"{name}.log")
        self._procs.append(proc.start())
        proc.wait_for_log(ready, timeout_s=60)
        return proc

    def stop(self, proc: ManagedProcess) -> None:
        proc.stop(timeout_s=30)
        if proc in self._procs:
            self._procs.remove(proc)

    def kombu(self, queue: str, *, concurrency: int) -> KombuKafka:
        kombu = KombuKafka(
            bootstrap_servers=self.stack.bootstrap_servers,
            redis_url=self.stack.redis_url,
            ledger_url=self.stack.ledger_url,
            queue=queue,
            log_dir=self.log_dir,
            concurrency=concurrency,
            worker_app=KOMBU_APP,
        )
        self._kombu.append(kombu)
        return kombu
