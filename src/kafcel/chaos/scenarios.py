"""The chaos scenarios: what each one injects while the pipeline drains.

A fault runs in its own thread beside the measurement loop and returns when it has done
all its damage (and repaired what a person would repair: a killed bridge is restarted).
Faults strike at random points of the run's progress (the share of orders whose effect
has happened), so they hit a busy pipeline whatever N and the machine's speed.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .brokerfaults import broker_pause, kafka_kill_9, leader_kill
from .netfaults import partition_bridge, partition_worker
from .rig import ChaosStack, KafcelRig
from .timing import Progress, moments, reach

__all__ = ["FAST", "FAST_PATH_B", "FAST_RABBITMQ", "SCENARIOS", "Scenario"]

Fault = Callable[[ChaosStack, KafcelRig, random.Random, threading.Event, Progress], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    system: str  # "kafcel" (bridge), "kafcel-worker" (workers consume) or "kombu-kafka"
    fault: Fault | None = None
    poison_ratio: float = 0.0
    bridges: int = 1
    workers: int = 1
    # Spread submission over this many seconds (the bounce scenario needs a long run).
    submit_over_s: float = 0.0
    # Apache Kafka nodes the scenario needs (3: replication 3, min.insync.replicas=2).
    brokers: int = 1
    # A fault of Apache Kafka's own processes: not run on Tansu.
    kafka_only: bool = False
    description: str = ""
    # Each worker and bridge in a network namespace of its own (chaos/netlab.py; root).
    netns: bool = False
    # The fault strikes by the share of the workload submitted, not of effects done: it
    # must hit the producer while it is still producing.
    faults_follow_submits: bool = False
    # Celery's broker in the kafcel rows: "redis" (the stack's) or "rabbitmq".
    celery_broker: str = "redis"

    @property
    def key(self) -> str:
        """How ``--only`` names the row: ``kafcel:worker-kill-9``, and with another Celery
        broker than Redis ``kafcel@rabbitmq:worker-kill-9``."""
        broker = "" if self.celery_broker == "redis" else f"@{self.celery_broker}"
        return f"{self.system}{broker}:{self.name}"


def _five_times(
    p: Progress, rng: random.Random, stop: threading.Event, hurt: Callable[[], None]
) -> None:
    for at in moments(rng, 5):
        if not reach(p, at, stop):
            return
        hurt()


def _restart_bridge_5_times(sig: int) -> Fault:
    def fault(
        stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
    ) -> None:
        def hurt() -> None:
            rig.kill_bridge(0, sig=sig)
            stack.note(f"{signal.Signals(sig).name} bridge 0")
            rig.start_bridge(0)

        _five_times(p, rng, stop, hurt)

    return fault


def _restart_worker_5_times(sig: int) -> Fault:
    def fault(
        stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
    ) -> None:
        def hurt() -> None:
            index = rng.randrange(len(rig.workers))
            rig.kill_worker(index, sig=sig)
            stack.note(f"{signal.Signals(sig).name} worker {index}")
            rig.start_worker(index)

        _five_times(p, rng, stop, hurt)

    return fault


def _once_midway(hurt: Callable[[ChaosStack], None], what: str) -> Fault:
    """Hurt the stack once, somewhere between 20 % and 60 % of the run."""

    def fault(
        stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
    ) -> None:
        if reach(p, rng.uniform(0.2, 0.6), stop):
            hurt(stack)
            stack.note(what)

    return fault


kill_worker = _restart_worker_5_times(signal.SIGKILL)
term_worker = _restart_worker_5_times(signal.SIGTERM)
kill_bridge = _restart_bridge_5_times(signal.SIGKILL)
term_bridge = _restart_bridge_5_times(signal.SIGTERM)
flush_redis = _once_midway(ChaosStack.flush_redis, "FLUSHALL on Celery's Redis")
restart_redis = _once_midway(ChaosStack.restart_redis, "Celery's Redis restarted")
restart_rabbitmq = _once_midway(
    ChaosStack.restart_rabbitmq, "kill -9 RabbitMQ (Celery's broker), then started again"
)


def bounce_bridge(
    stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
) -> None:
    """Two consumers in one group (bridges, or consuming workers); the second stops and
    starts every 10 s for 2 minutes."""
    kind, _ = rig.consumers
    halt, start = (
        (rig.kill_worker, rig.start_worker)
        if kind == "worker"
        else (rig.kill_bridge, rig.start_bridge)
    )
    deadline = time.monotonic() + 120
    up = True
    while time.monotonic() < deadline:
        if stop.wait(10):
            return
        if up:
            halt(1, sig=signal.SIGTERM)
            stack.note(f"SIGTERM {kind} 1")
        else:
            start(1)
            stack.note(f"{kind} 1 started")
        up = not up
    if not up:
        start(1)


def _path_b(name: str, fault: Fault | None, description: str, **options: Any) -> Scenario:
    """A scenario of path B: two Celery workers consume the task topic, no bridge."""
    return Scenario(
        name, "kafcel-worker", fault, bridges=0, workers=2, description=description, **options
    )


# Path B's rows: every fault that applies when the workers consume the topic themselves.
_PATH_B = [
    _path_b("control", None, "no fault"),
    _path_b("worker-kill-9", kill_worker, "kill -9 a consuming worker (main and children) 5 times"),
    _path_b(
        "worker-sigterm", term_worker, "SIGTERM a consuming worker 5 times, restarted each time"
    ),
    _path_b(
        "worker-bounce",
        bounce_bridge,
        "2 consuming workers, one stopped/started every 10 s for 2 min",
        submit_over_s=110.0,
    ),
    _path_b(
        "kafka-partition", partition_bridge, "one worker cut off from Kafka for 30 s", netns=True
    ),
    _path_b(
        "worker-partition",
        partition_worker,
        "one worker cut off from Celery's Redis for 30 s (it keeps its partitions, paused)",
        netns=True,
    ),
    _path_b("redis-flushall", flush_redis, "FLUSHALL on Celery's Redis"),
    _path_b("redis-restart", restart_redis, "Celery's Redis restarted"),
    _path_b("kafka-kill-9", kafka_kill_9, "kill -9 the Kafka node 3 times", kafka_only=True),
    _path_b(
        "leader-kill",
        leader_kill,
        "3 nodes: kill -9 the busiest leader twice, then the active controller",
        brokers=3,
        kafka_only=True,
    ),
    _path_b(
        "broker-pause",
        broker_pause,
        "3 nodes: SIGSTOP the busiest leader for 20 s",
        brokers=3,
        kafka_only=True,
    ),
    _path_b(
        "submit-during-failover",
        leader_kill,
        "leader-kill while the submitter keeps submitting",
        brokers=3,
        kafka_only=True,
        submit_over_s=75.0,
        faults_follow_submits=True,
    ),
    _path_b(
        "poison",
        None,
        "10% poison of every kind, always-failing and self-killing tasks",
        poison_ratio=0.10,
    ),
]

SCENARIOS: list[Scenario] = [
    Scenario("control", "kafcel", description="no fault"),
    Scenario("bridge-kill-9", "kafcel", kill_bridge, description="kill -9 the bridge 5 times"),
    Scenario("bridge-sigterm", "kafcel", term_bridge, description="SIGTERM the bridge 5 times"),
    Scenario(
        "worker-kill-9",
        "kafcel",
        kill_worker,
        workers=2,
        description="kill -9 a worker (main and children) 5 times",
    ),
    Scenario("redis-flushall", "kafcel", flush_redis, description="FLUSHALL on Celery's Redis"),
    Scenario("redis-restart", "kafcel", restart_redis, description="Celery's Redis restarted"),
    Scenario(
        "bridge-bounce",
        "kafcel",
        bounce_bridge,
        bridges=2,
        submit_over_s=110.0,
        description="2 bridges, one stopped/started every 10 s for 2 min",
    ),
    Scenario(
        "bridge-partition",
        "kafcel",
        partition_bridge,
        bridges=2,
        netns=True,
        description="2 bridges, one cut off from Kafka for 30 s while it holds tasks",
    ),
    Scenario(
        "worker-partition",
        "kafcel",
        partition_worker,
        workers=2,
        netns=True,
        description="2 workers, one cut off from Celery's Redis for 30 s while its tasks run",
    ),
    Scenario(
        "kafka-kill-9",
        "kafcel",
        kafka_kill_9,
        kafka_only=True,
        description="kill -9 the Kafka node 3 times, restarted from its log directory",
    ),
    Scenario(
        "leader-kill",
        "kafcel",
        leader_kill,
        brokers=3,
        kafka_only=True,
        description="3 nodes: kill -9 the busiest leader (twice), then the active "
        "controller; each restarted 15 s later",
    ),
    Scenario(
        "broker-pause",
        "kafcel",
        broker_pause,
        brokers=3,
        kafka_only=True,
        description="3 nodes: SIGSTOP the busiest leader for 20 s, then SIGCONT",
    ),
    Scenario(
        "submit-during-failover",
        "kafcel",
        leader_kill,
        brokers=3,
        kafka_only=True,
        submit_over_s=75.0,
        faults_follow_submits=True,
        description="leader-kill while the submitter keeps submitting; every "
        "acknowledged submit runs, every failed one is reported",
    ),
    Scenario(
        "poison",
        "kafcel",
        poison_ratio=0.10,
        description="10% poison of every kind, always-failing and self-killing tasks",
    ),
    *_PATH_B,
    # RabbitMQ as Celery's broker (Celery's default queue: durable, messages persistent).
    Scenario(
        "rabbitmq-restart",
        "kafcel",
        restart_rabbitmq,
        celery_broker="rabbitmq",
        description="kill -9 RabbitMQ (Celery's broker) once, started again at once",
    ),
    Scenario(
        "worker-kill-9",
        "kafcel",
        kill_worker,
        workers=2,
        celery_broker="rabbitmq",
        description="RabbitMQ as Celery's broker: kill -9 a worker (main and children) 5 times",
    ),
    Scenario("control", "kombu-kafka", description="no fault"),
    Scenario("worker-kill-9", "kombu-kafka", kill_worker, description="kill -9 the worker 5 times"),
    Scenario("redis-flushall", "kombu-kafka", flush_redis, description="FLUSHALL on Redis"),
]

# The subsets `make test` runs with a small N: the bridge's, path B's, RabbitMQ's.
FAST = ("control", "bridge-kill-9", "redis-flushall", "poison", "kafka-kill-9")
FAST_PATH_B = ("control", "worker-kill-9", "worker-sigterm", "poison", "kafka-kill-9")
FAST_RABBITMQ = ("rabbitmq-restart", "worker-kill-9")
