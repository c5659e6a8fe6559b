"""Network partitions: a bridge cut off from Kafka, a worker cut off from Celery's Redis.

Every process of these scenarios runs in a namespace of its own (chaos/netlab.py); the
fault drops, in one process's namespace, its packets to and from some of the services'
ports, for ``CUT_FOR_S``, then heals. Unlike SIGSTOP the process keeps running: its
timers fire, it acts on what it last knew, and its kernel retransmits into the void.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from .netlab import Netns
from .rig import ChaosStack, KafcelRig
from .timing import Progress, moments, reach

__all__ = ["CUT_FOR_S", "kafka_client_ports", "partition_bridge", "partition_worker"]

log = logging.getLogger("kafcel.chaos")

# Five times the chaos settings' 6 s session and ten 3 s leases: long enough that the
# group and the once-guard give the cut-off process up, not a blip they ride out.
CUT_FOR_S = 30.0
# After the heal the fault stays busy this long, so the measurement ends only once the
# returning process has acted on its stale state (late commits, late outcomes): more
# than two sessions and several leases and commit intervals.
_AFTER_HEAL_S = 15.0
# How long the returning bridge may take to rejoin its group.
_REJOIN_TIMEOUT_S = 60.0


def kafka_client_ports(stack: ChaosStack) -> list[int]:
    """The port clients reach each Kafka node on (not the KRaft controller ports)."""
    devstack = stack.devstack
    if devstack.broker == "kafka":
        return [node.port for node in devstack.kafka.nodes]
    return [devstack.kafka_port]


def _cut_at_random_moment(
    stack: ChaosStack,
    netns: Netns,
    ports: list[int],
    rng: random.Random,
    stop: threading.Event,
    p: Progress,
    before_heal: Callable[[], None] | None = None,
) -> bool:
    """Cut ``netns`` off from ``ports`` at a random moment of progress for ``CUT_FOR_S``;
    False if the run ended before that moment. ``before_heal`` runs just before the
    heal (to mark a log: what the process writes after it is its return)."""
    (at,) = moments(rng, 1, 0.2, 0.6)
    if not reach(p, at, stop):
        return False
    log.info("cutting %s off from ports %s for %.0fs", netns.label, ports, CUT_FOR_S)
    netns.cut(ports)
    stack.note(f"{netns.label} cut off from ports {ports}")
    try:
        # The measurement waits for this thread, so stop is set early only on Ctrl-C.
        stop.wait(CUT_FOR_S)
    finally:
        if before_heal is not None:
            before_heal()
        netns.heal()
        stack.note(f"{netns.label} reconnected")
    return not stop.is_set()


def partition_bridge(
    stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
) -> None:
    """Bridge 1 (or consuming worker 1) loses Kafka (every client port, both ways) for
    ``CUT_FOR_S``; it still reaches Redis. Its partitions move to the other meanwhile."""
    kind, consumers = rig.consumers
    bridge = consumers[1]
    mark = bridge.log_size()
    healed = [mark]

    def before_heal() -> None:
        healed[0] = bridge.log_size()

    ns = rig.netns[(kind, 1)]
    if not _cut_at_random_moment(stack, ns, kafka_client_ports(stack), rng, stop, p, before_heal):
        return
    # Back in the group (its partitions were lost, so the rejoin assigns afresh), then
    # time for whatever it would commit or settle from before the cut.
    bridge.wait_for_log("lost without commit", timeout_s=1, after=mark)
    bridge.wait_for_log("assigned:", timeout_s=_REJOIN_TIMEOUT_S, after=healed[0])
    stop.wait(_AFTER_HEAL_S)


def partition_worker(
    stack: ChaosStack, rig: KafcelRig, rng: random.Random, stop: threading.Event, p: Progress
) -> None:
    """One worker loses Celery's Redis (broker, backend and once-guard; not the ledger)
    for ``CUT_FOR_S`` while its tasks run: their leases lapse and they run elsewhere."""
    index = rng.randrange(len(rig.workers))
    netns = rig.netns[("worker", index)]
    if not _cut_at_random_moment(stack, netns, [stack.devstack.redis_port], rng, stop, p):
        return
    if not rig.workers[index].alive():
        # What its supervisor would do (docs/reliability.md, Limits): a worker that gave
        # up during the cut comes back, in the same namespace.
        log.warning("worker %d ended during the cut: starting it again", index)
        rig.start_worker(index)
    stop.wait(_AFTER_HEAL_S)
