"""Faults of Apache Kafka itself: nodes killed, failed over and frozen while the
pipeline drains.

What each one does at the process level (docs/reliability.md has the table):

- ``kafka-kill-9``: SIGKILL of the single node (no shutdown hook, no flush, no
  controlled leader handover), restarted at once from its log directory as a supervisor
  would; the node recovers its unflushed segments on start.
- ``leader-kill``: on three nodes, SIGKILL of the node leading most task partitions,
  restarted 15 s later; twice, then the same for the KRaft quorum's active controller.
  Before each kill the cluster is back to full in-sync replicas, as an operator's
  rolling bounce waits, so each kill is one failure, not two stacked.
- ``broker-pause``: SIGSTOP of the node leading most task partitions for 20 s (a long GC
  pause or a frozen VM): its sockets stay open and the kernel keeps ACKing, but nothing
  answers, so clients hang on requests instead of seeing a refused connection.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter

from ..errors import DevStackError, KafkaError
from ..kafka.admin import partition_leaders, under_replicated
from .rig import ChaosStack, KafcelRig
from .timing import Progress, moments, reach

__all__ = ["broker_pause", "kafka_kill_9", "leader_kill"]

_DOWN_FOR_S = 15.0
_PAUSED_FOR_S = 20.0
_IN_SYNC_TIMEOUT_S = 120.0


def kafka_kill_9(
    stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
) -> None:
    for at in moments(rng, 3):
        if not reach(p, at, stop):
            return
        stack.devstack.kill("kafka", signal.SIGKILL)
        stack.note("SIGKILL kafka")
        stack.devstack.start("kafka")
        stack.note("kafka restarted")


def leader_kill(
    stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
) -> None:
    for n, at in enumerate(moments(rng, 3, high=0.6)):
        if not reach(p, at, stop):
            return
        _wait_in_sync(stack, stop)
        if stop.is_set():
            return
        if n == 2:
            victim, why = stack.devstack.active_controller(), "the active controller"
        else:
            victim, why = _busiest(stack, rig)
        stack.devstack.kill(victim, signal.SIGKILL)
        stack.note(f"SIGKILL {victim}, {why}")
        stop.wait(_DOWN_FOR_S)  # restarted even when the run ends meanwhile
        stack.devstack.start(victim)
        stack.note(f"{victim} restarted")


def broker_pause(
    stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
) -> None:
    if not reach(p, rng.uniform(0.1, 0.5), stop):
        return
    _wait_in_sync(stack, stop)
    if stop.is_set():
        return
    victim, why = _busiest(stack, rig)
    stack.devstack.kill(victim, signal.SIGSTOP)
    stack.note(f"SIGSTOP {victim}, {why}")
    try:
        stop.wait(_PAUSED_FOR_S)
    finally:
        stack.devstack.kill(victim, signal.SIGCONT)
        stack.note(f"SIGCONT {victim}")


def _busiest(stack: ChaosStack, rig: KafcelRig) -> tuple[str, str]:
    """The node leading most partitions of the scenario's task topic, and that count."""
    topic = rig.settings.topic
    leaders = partition_leaders(stack.bootstrap_servers, topic)
    led = Counter(node for node in leaders.values() if node >= 0)
    if not led:
        raise DevStackError(f"{topic} has no partition leader")
    node, count = led.most_common(1)[0]
    why = f"leader of {count} of {len(leaders)} task partitions"
    return stack.devstack.node_name(node), why


def _wait_in_sync(stack: ChaosStack, stop: threading.Event) -> None:
    """Wait until every partition of every topic has all its replicas in sync."""
    deadline = time.monotonic() + _IN_SYNC_TIMEOUT_S
    while not stop.is_set():
        try:
            behind = under_replicated(stack.bootstrap_servers)
        except KafkaError:
            behind = ["(no metadata)"]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise DevStackError(
                f"{len(behind)} partition(s) still under-replicated after "
                f"{_IN_SYNC_TIMEOUT_S:g}s, e.g. {behind[0]}"
            )
        stop.wait(0.5)
