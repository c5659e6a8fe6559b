"""One measurement each: a rate (tasks/s), percentiles (ms) or a peak RSS (MB).

Every function sets up what it measures on the rig (its own topic, group, queue and
tally keys), measures once and tears down; :mod:`benchmarks.bench` repeats and takes
medians.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from celery import Celery
from confluent_kafka import Consumer
from confluent_kafka import Producer as KafkaProducer

from kafcel import Producer
from kafcel.chaos.kombu_kafka import KombuKafka
from kafcel.dev.procs import ManagedProcess
from kafcel.kafka.config import client_config
from kafcel.producer import _DEFAULTS as PRODUCER_DEFAULTS
from kafcel.protocol.envelope import Envelope
from kafcel.settings import Settings

from .rig import BenchRig, cpu_s, peak_rss_mb, processes, wait_for
from .tasks import counter_key, latency_key

__all__ = [
    "SYSTEMS",
    "Workers",
    "dispatch_rate",
    "e2e_rate",
    "fill",
    "kombu_send_rate",
    "kombu_sender",
    "latency",
    "memory",
    "raw_consume_rate",
    "raw_lpush_rate",
    "raw_produce_rate",
    "send_task_rate",
    "send_tasks",
    "stamped",
    "submit_rate",
    "submit_tasks",
]

Tick = Callable[[int], None]


def _run() -> str:
    return uuid.uuid4().hex[:10]


def _nothing(_: int) -> None:
    pass


def send_tasks(app: Celery, queue: str, run: str, n: int, tick: Tick = _nothing) -> None:
    """``n`` trivial tasks by Celery's ``send_task``, one call each, as users call it."""
    for i in range(n):
        app.send_task("bench.noop", args=(run, i), queue=queue)
        if i % 100 == 0:
            tick(i)


def submit_tasks(
    producer: Producer, run: str, n: int, *, keys: int | None, tick: Tick = _nothing
) -> None:
    """``n`` trivial tasks by ``kafcel.Producer.submit`` over ``keys`` keys (None: one
    key each), until Kafka has them all."""
    for i in range(n):
        producer.submit("bench.noop", args=[run, i], key=f"user-{i % keys if keys else i}")
        if i % 5000 == 0:
            tick(i)
    producer.flush()


def send_task_rate(app: Celery, rig: BenchRig, n: int, tick: Tick = _nothing) -> float:
    """Celery's ``send_task`` to the Redis broker."""
    run, queue = _run(), f"bench-enqueue-{_run()}"
    started = time.perf_counter()
    send_tasks(app, queue, run, n, tick)
    rate = n / (time.perf_counter() - started)
    rig.broker.delete(queue)
    return rate


def kombu_send_rate(rig: BenchRig, n: int, tick: Tick = _nothing) -> float:
    """Celery's ``send_task`` through kombu's ``confluentkafka`` transport."""
    run, queue = _run(), f"bench-kombu-{_run()}"
    app = rig.kombu(queue, concurrency=1)._client()
    send_tasks(app, queue, run, 1)  # creates the topic
    started = time.perf_counter()
    send_tasks(app, queue, run, n, tick)
    return n / (time.perf_counter() - started)


def submit_rate(rig: BenchRig, n: int, tick: Tick = _nothing) -> float:
    """``kafcel.Producer.submit``, one call per task, until Kafka has them all."""
    run = _run()
    producer = Producer(settings=rig.settings(run))
    submit_tasks(producer, run, 1, keys=1)  # connects and learns the topic
    started = time.perf_counter()
    submit_tasks(producer, run, n, keys=1000, tick=tick)
    return n / (time.perf_counter() - started)


def raw_produce_rate(rig: BenchRig, n: int, tick: Tick = _nothing) -> float:
    """A bare confluent-kafka produce loop: what :func:`submit_rate` costs without kafcel.

    The same records (each envelope as ``submit`` encodes it, encoded before the clock
    starts), the same keys and the same producer settings as :class:`kafcel.Producer`'s;
    served delivery reports as often, until Kafka has them all.
    """
    run = _run()
    settings = rig.settings(run)
    stamp = datetime.now().astimezone().isoformat()
    values = [
        Envelope(task="bench.noop", args=(run, i), id=str(uuid.uuid4()), created_at=stamp).encode()
        for i in range(n)
    ]
    keys = [f"user-{i % 1000}".encode() for i in range(n)]
    conf = {**client_config(settings.bootstrap_servers), **PRODUCER_DEFAULTS}
    producer = KafkaProducer({**conf, **settings.librdkafka()})
    topic = settings.topic
    producer.produce(topic, value=values[0], key=keys[0])  # connects and learns the topic
    producer.flush(30)
    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, value=values[i], key=keys[i])
                break
            except BufferError:
                producer.poll(0.1)
        if i % 64 == 0:
            producer.poll(0)
        if i % 5000 == 0:
            tick(i)
    if producer.flush(60):
        raise RuntimeError("the raw producer's records were not all delivered")
    return n / (time.perf_counter() - started)


def fill(rig: BenchRig, run: str, n: int, *, tick: Tick = _nothing) -> Settings:
    """Write ``n`` task records to a new topic before anything consumes it."""
    settings = rig.settings(run)
    submit_tasks(Producer(settings=settings), run, n, keys=None, tick=tick)
    return settings


def dispatch_rate(
    rig: BenchRig,
    n: int,
    *,
    profile: Path | None = None,
    tick: Tick = _nothing,
    keep: list[bytes] | None = None,
) -> float:
    """The bridge alone: a backlog of ``n`` records into Celery's Redis queue, no worker.

    Timed from the bridge holding its partitions to the ``n``-th message in the queue,
    so the group join is not counted; every record has its own key, so none waits
    behind another. ``keep`` receives the messages the bridge wrote, in the order it
    wrote them (for :func:`raw_lpush_rate`).
    """
    run = _run()
    queue = f"bench-dispatch-{run}"
    settings = fill(rig, run, n).replace(max_in_flight=n + 1000, drain_timeout_s=1.0)
    broker = rig.broker
    bridge = rig.bridge(settings, queue, profile=profile)
    # rig.bridge returns once the bridge holds its partitions: the join is not timed.
    # (Timing from the first LLEN > 0 instead left nothing to time when the first batch
    # was the whole backlog.)
    started = time.monotonic()
    try:

        def done() -> bool:
            count = int(broker.llen(queue))
            tick(count)
            return count >= n

        last = wait_for(done, timeout_s=600, what=f"{n} dispatches")
        if keep is not None:
            # LPUSH puts each message at the head: the list reads newest first.
            keep[:] = reversed(broker.lrange(queue, 0, -1))
    finally:
        # SIGTERM: with no worker nothing settles, so the drain gives up after 1 s; a
        # profiled bridge must exit by itself to write its report.
        rig.stop(bridge)
        broker.delete(queue)
    return n / max(last - started, 1e-6)


# The bridge fetches up to this many records a turn and writes them in one request.
_LPUSH_BATCH = 500


def raw_lpush_rate(rig: BenchRig, messages: list[bytes], tick: Tick = _nothing) -> float:
    """The Redis writes of a dispatch alone: the bridge's own Celery messages pushed
    again, one LPUSH each, pipelined ``_LPUSH_BATCH`` to a request, no Kafka, no bridge.
    """
    if not messages:
        raise RuntimeError("no dispatched messages to push: run dispatch_rate(keep=...) first")
    queue = f"bench-lpush-{_run()}"
    broker = rig.broker
    started = time.perf_counter()
    for at in range(0, len(messages), _LPUSH_BATCH):
        pipe = broker.pipeline(transaction=False)
        for message in messages[at : at + _LPUSH_BATCH]:
            pipe.lpush(queue, message)
        pipe.execute()
        tick(at)
    elapsed = time.perf_counter() - started
    pushed = int(broker.llen(queue))
    broker.delete(queue)
    if pushed != len(messages):
        raise RuntimeError(f"pushed {len(messages)} messages, the list holds {pushed}")
    return len(messages) / elapsed


# The end-to-end and latency systems: plain Celery (send_task), kafcel through a bridge
# (path A), kafcel consumed by the workers themselves (path B).
SYSTEMS = ("celery", "kafcel", "kafcel_worker")


@dataclass
class Workers:
    """W worker processes fed by ``send_task``, by kafcel's bridge, or consuming Kafka.

    Plain Celery and the bridge feed one worker on a Redis queue. Path B needs the
    ``--kafcel-consume`` flag at start, so it has a worker of its own: the same app,
    tasks, queue, ``-c`` and pool, the flag added, on a topic and group of its own (the
    bridge's records are not read twice). Only what the measured system uses runs: the
    bridge while kafcel's path A is measured, the consuming worker while path B is (both
    poll Kafka even when idle, and plain Celery's figures must not pay for that). The
    plain worker stays up, idle on its Redis queue during path B: it is a row of path B's
    CPU table, so its cost is in the figures.
    """

    rig: BenchRig
    app: Celery
    concurrency: int
    # Where the consuming worker, when it starts, writes its profiles (None: unprofiled).
    consume_profile: Path | None = None
    # Celery's broker: "redis" (the stack's) or "rabbitmq", for every system alike.
    celery_broker: str = "redis"

    def __post_init__(self) -> None:
        self.run = _run()
        self.queue = f"bench-e2e-{self.run}"
        self.settings = self.rig.settings(self.run)
        self.broker_url = self.rig.stack.celery_broker_url(self.celery_broker)
        # send_task as the plain-Celery row's application calls it, on that broker.
        self.sender_app = self.app
        if self.celery_broker != "redis":
            self.sender_app = Celery(self.app.main, broker=self.broker_url)
            self.sender_app.conf.result_backend = self.app.conf.result_backend
        self.worker = self.rig.worker(
            self.settings,
            self.queue,
            concurrency=self.concurrency,
            celery_broker_url=self.broker_url,
        )
        self.bridge: ManagedProcess | None = None
        self.producer = Producer(settings=self.settings)
        self.consume_settings = self.rig.settings(f"{self.run}-w")
        self.consumer: ManagedProcess | None = None
        self.consume_producer = Producer(settings=self.consume_settings)

    def use(self, system: str) -> None:
        """Run what ``system`` needs, stop what it does not (at most one Kafka reader)."""
        if system != "kafcel" and self.bridge is not None:
            self.rig.stop(self.bridge)
            self.bridge = None
        if system != "kafcel_worker" and self.consumer is not None:
            self.rig.stop(self.consumer)
            self.consumer = None
        if system == "kafcel" and self.bridge is None:
            self.bridge = self.rig.bridge(
                self.settings, self.queue, celery_broker_url=self.broker_url
            )
        if system == "kafcel_worker" and self.consumer is None:
            self.consumer = self.rig.worker(
                self.consume_settings,
                self.queue,
                concurrency=self.concurrency,
                consume=True,
                profile=self.consume_profile,
                celery_broker_url=self.broker_url,
            )

    def stop(self) -> None:
        self.use("celery")
        self.rig.stop(self.worker)
        if self.sender_app is not self.app:
            self.sender_app.close()

    def processes(self) -> dict[str, psutil.Process]:
        """The processes sharing the cores while the running system is measured, by role:
        ``worker`` is the worker that runs the tasks (the consuming one for path B)."""
        if self.consumer is None:
            return processes(self.rig, worker=self.worker, bridge=self.bridge)
        found = processes(self.rig, worker=self.consumer)
        # Its pool processes wait on a pipe: only the main process polls (Redis).
        found["plain worker, idle"] = psutil.Process(self.worker.pid)
        return found

    def sender(self, system: str) -> Callable[[str, int], None]:
        """``send(run, n)`` of ``system``, which :meth:`use` must have started."""
        if system == "celery":
            return lambda run, n: send_tasks(self.sender_app, self.queue, run, n)
        producer = self.producer if system == "kafcel" else self.consume_producer
        return lambda run, n: submit_tasks(producer, run, n, keys=1000)

    def stamper(
        self, system: str, run: str
    ) -> tuple[Callable[[int, float], None], Callable[[], None]]:
        """``send(i, sent_at)`` of one ``bench.stamp`` task, and what ends a run of them."""
        if system == "celery":

            def send(i: int, slot: float) -> None:
                self.sender_app.send_task("bench.stamp", args=(run, slot), queue=self.queue)

            return send, lambda: None
        producer = self.producer if system == "kafcel" else self.consume_producer

        def submit(i: int, slot: float) -> None:
            producer.submit("bench.stamp", args=[run, slot], key=f"user-{i % 1000}")

        return submit, producer.flush


def _wait_count(rig: BenchRig, key: str, n: int, tick: Tick, *, timeout_s: float) -> float:
    tally = rig.tally

    def done() -> bool:
        count = int(tally.get(key) or 0)
        tick(count)
        return count >= n

    return wait_for(done, timeout_s=timeout_s, what=f"{n} tasks done", every_s=0.01)


def e2e_rate(
    rig: BenchRig,
    send: Callable[[str, int], None],
    n: int,
    tick: Tick = _nothing,
    *,
    watch: Callable[[], dict[str, psutil.Process]] | None = None,
    cpu: dict[str, float] | None = None,
) -> float:
    """``n`` trivial tasks, from the first submit until the last one has run.

    With ``watch`` and ``cpu``, ``cpu`` receives the CPU microseconds per task each
    watched process spent meanwhile: on a machine whose cores the workers, the broker
    and the bridge share, that is where a lower rate comes from.
    """
    run = _run()
    procs = watch() if watch is not None else {}
    before = cpu_s(procs)
    started = time.monotonic()
    send(run, n)
    finished = _wait_count(rig, counter_key(run), n, tick, timeout_s=1800)
    if cpu is not None:
        after = cpu_s(procs)
        cpu.clear()
        # A process that exited meanwhile has no reading: left out, not negative.
        cpu.update(
            {k: round((after[k] - before[k]) / n * 1e6) for k in procs if after[k] >= before[k]}
        )
    return n / (finished - started)


def kombu_sender(kombu: KombuKafka) -> Callable[[str, int], None]:
    """``send_task`` through kombu's Kafka transport to a running kombu-kafka worker."""

    def send(run: str, n: int) -> None:
        send_tasks(kombu._client(), kombu.queue, run, n)

    return send


def latency(
    workers: Workers, system: str, *, rate: float, duration_s: float, tick: Tick = _nothing
) -> dict[str, float]:
    """Submit-to-start percentiles (ms) of tasks sent at a steady ``rate`` (open loop)."""
    run = _run()
    workers.use(system)
    send, flush = workers.stamper(system, run)
    n = max(int(rate * duration_s), 20)
    return stamped(workers.rig, run, send, flush, rate=rate, n=n, tick=tick)


def stamped(
    rig: BenchRig,
    run: str,
    send: Callable[[int, float], None],
    flush: Callable[[], None],
    *,
    rate: float,
    n: int,
    tick: Tick = _nothing,
    timeout_s: float = 120,
) -> dict[str, float]:
    """Submit-to-start percentiles (ms) of ``n`` ``bench.stamp`` tasks of ``run``, each
    sent by ``send(i, slot)`` at a steady ``rate`` (open loop); ``flush`` ends the run."""
    interval_s = 1.0 / rate
    started = time.perf_counter()
    wall0 = time.time()
    for i in range(n):
        # Open loop: each task leaves at its slot whatever happened to the previous one,
        # and is timed from that slot, so a sender falling behind counts as latency.
        delay_s = started + i * interval_s - time.perf_counter()
        if delay_s > 0:
            time.sleep(delay_s)
        send(i, wall0 + i * interval_s)
        if i % 100 == 0:
            tick(i)
    flush()
    tally = rig.tally
    wait_for(
        lambda: int(tally.llen(latency_key(run))) >= n,
        timeout_s=timeout_s,
        what=f"{n} stamped tasks",
        every_s=0.05,
    )
    delays_ms = sorted(float(x) * 1000 for x in tally.lrange(latency_key(run), 0, -1))
    return {
        "rate": rate,
        "n": n,
        "p50_ms": _pct(delays_ms, 50),
        "p95_ms": _pct(delays_ms, 95),
        "p99_ms": _pct(delays_ms, 99),
    }


def _pct(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(round(pct / 100 * (len(sorted_values) - 1)), len(sorted_values) - 1)
    return sorted_values[index]


def memory(
    rig: BenchRig,
    run: str,
    settings: Settings,
    backlog: int,
    *,
    concurrency: int,
    tick: Tick = _nothing,
    bridge_alone_first: bool = False,
) -> dict[str, Any]:
    """Bridge peak RSS while a ``backlog`` written by :func:`fill` for ``run`` drains
    through W workers, the bridge at its default settings (``max_in_flight`` bounds its
    memory). With ``bridge_alone_first`` the bridge runs alone until it stops taking
    records (its limits pause it, or the whole backlog is in Celery's queue), so the peak
    shows all its limits allow; then the workers start."""
    queue = f"bench-memory-{run}"
    taken: int | None = None
    if bridge_alone_first:
        bridge = rig.bridge(settings, queue)
        wait_for(
            lambda: rig.broker.llen(queue) >= backlog or "paused:" in bridge.tail(),
            timeout_s=60,
            what="the bridge to stop taking records",
            every_s=0.2,
        )
        taken = int(rig.broker.llen(queue))
        worker = rig.worker(settings, queue, concurrency=concurrency)
    else:
        worker = rig.worker(settings, queue, concurrency=concurrency)
        bridge = rig.bridge(settings, queue)
    started = time.monotonic()
    try:
        # VmHWM is the kernel's own peak: no sampling to miss a spike.
        finished = _wait_count(rig, counter_key(run), backlog, tick, timeout_s=3600)
        peak = peak_rss_mb(bridge.pid)
    finally:
        rig.stop(bridge)
        rig.stop(worker)
    return {
        "backlog": backlog,
        "bridge_peak_rss_mb": peak,
        "drain_s": finished - started,
        "drain_rate": backlog / (finished - started),
        "max_in_flight": settings.max_in_flight,
        "max_in_flight_bytes": settings.max_in_flight_bytes,
        "dispatched_before_workers": taken,
    }


def raw_consume_rate(rig: BenchRig, topic: str, n: int) -> float:
    """A bare confluent-kafka consumer reading ``n`` records: the broker's ceiling here."""
    consumer = Consumer(
        {
            **client_config(rig.stack.bootstrap_servers),
            "group.id": f"bench-raw-{_run()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    count = 0
    started: float | None = None
    try:
        while count < n:
            msgs = consumer.consume(1000, timeout=1.0)
            if msgs and started is None:
                started = time.perf_counter()
            count += sum(1 for m in msgs if m.error() is None)
        assert started is not None
        return n / (time.perf_counter() - started)
    finally:
        consumer.close()
