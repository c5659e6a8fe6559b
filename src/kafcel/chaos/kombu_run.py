"""The kombu-kafka rows: the same workload and faults against Celery's own Kafka transport.

No bridge, no once-guard, no DLQ: Celery with ``acks_late`` and
``task_reject_on_worker_lost`` on kombu's ``confluentkafka://`` broker, results in the
suite's Redis. Lag is read from the transport's consumer group on its queue topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .kombu_kafka import KombuKafka
from .ledger import Ledger
from .rig import ChaosStack
from .scenarios import Scenario
from .workload import Workload

if TYPE_CHECKING:
    from .runner import ScenarioResult

__all__ = ["run_kombu"]

_WORK_MS = 2.0


class _Rig:
    """What the fault functions need of a rig, for the single kombu-kafka worker."""

    def __init__(self, system: KombuKafka) -> None:
        self.system = system
        self.workers = [system]

    def kill_worker(self, index: int = 0) -> None:
        self.system.kill_worker()

    def start_worker(self, index: int | None = None) -> None:
        self.system.start_worker()


def run_kombu(
    stack: ChaosStack,
    scenario: Scenario,
    workload: Workload,
    ledger: Ledger,
    log_dir: Path,
    seed: int,
    stall_s: float,
    on_progress: Callable[[str, int, int], None] | None,
    cancel: threading.Event | None = None,
) -> ScenarioResult:
    from .runner import Watch, _start_fault

    system = KombuKafka(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        ledger_url=stack.ledger_url,
        queue=f"kombu-chaos-{workload.run}",
        log_dir=log_dir,
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    try:
        system.start_worker()
        started = time.monotonic()
        calls = [
            ("chaos.apply", (workload.run, order, key, seq, _WORK_MS))
            for order, key, seq in workload.orders
        ]
        submitter = threading.Thread(target=system.submit, args=(calls,))
        submitter.start()
        watch = Watch(
            bootstrap_servers=stack.bootstrap_servers,
            group_id=system.group,
            topic=system.queue,
            dlq_topic=None,
            workload=workload,
            ledger=ledger,
            cancel=cancel,
        )
        fault = _start_fault(scenario, stack, _Rig(system), seed, stop, errors, watch.progress)
        note = watch.until_drained(
            busy=lambda: submitter.is_alive() or (fault is not None and fault.is_alive()),
            stall_s=stall_s,
            on_progress=lambda done, total: on_progress and on_progress(scenario.name, done, total),
        )
        drain_s = (watch.drained_at or time.monotonic()) - started
        stop.set()
        submitter.join()
        if fault is not None:
            fault.join()
        if errors:
            note = f"fault failed: {errors[0]}"
        return watch.result(scenario, drain_s, note, redispatched=0)
    finally:
        stop.set()
        system.stop()
