"""The kombu-kafka rows: the same workload and faults against Celery's own Kafka transport.

No bridge, no once-guard, no DLQ: Celery with ``acks_late`` and
``task_reject_on_worker_lost`` on kombu's ``confluentkafka://`` broker, results in the
suite's Redis. Lag is read from the transport's consumer group on its queue topic.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .history import OK, SENT
from .kombu_kafka import KombuKafka
from .ledger import Ledger
from .rig import ChaosStack
from .scenarios import Scenario
from .watch import Watch
from .workload import Workload

if TYPE_CHECKING:
    from .result import ScenarioResult

__all__ = ["run_kombu"]

_WORK_MS = 2.0


class _Rig:
    """What the fault functions need of a rig, for the single kombu-kafka worker."""

    def __init__(self, system: KombuKafka) -> None:
        self.system = system
        self.workers = [system]

    def kill_worker(self, index: int = 0, *, sig: int = signal.SIGKILL) -> None:
        # The same call as KafcelRig.kill_worker: the fault functions are shared.
        if sig != signal.SIGKILL:
            raise ValueError(f"the kombu-kafka worker is only killed, not sent {sig}")
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
    from .runner import drive

    system = KombuKafka(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        ledger_url=stack.ledger_url,
        queue=f"kombu-chaos-{workload.run}",
        log_dir=log_dir,
    )
    stop = threading.Event()
    try:
        system.start_worker()
        calls = [
            ("chaos.apply", (workload.run, order, key, seq, _WORK_MS))
            for order, key, seq in workload.orders
        ]
        watch = Watch(
            bootstrap_servers=stack.bootstrap_servers,
            group_id=system.group,
            topic=system.queue,
            dlq_topic=None,
            workload=workload,
            ledger=ledger,
            cancel=cancel,
        )
        return drive(
            scenario,
            stack,
            _Rig(system),
            watch,
            lambda: _submit(system, calls, ledger, [order for order, _, _ in workload.orders]),
            seed=seed,
            stop=stop,
            stall_s=stall_s,
            on_progress=on_progress,
        )
    finally:
        stop.set()
        system.stop()


def _submit(
    system: KombuKafka, calls: list[tuple[str, tuple[Any, ...]]], ledger: Ledger, orders: list[str]
) -> None:
    ledger.record_submits(orders, SENT)
    system.submit(calls)  # raises at the first message kombu did not deliver
    ledger.record_submits(orders, OK)
