"""``kafcel chaos``: run the scenarios, measure each one, report.

Per scenario: a fresh topic, group, Celery queue and ledger run on the suite's own stack
(Apache Kafka by default, or Tansu);
the workload is submitted, the fault injected while it drains, and the measurement loop
samples progress until every order has its effect, the DLQ holds every planted record
and the lag is 0, or until nothing has moved for ``stall_s`` (then the row shows what
was lost). The stack is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import KafcelError
from ..kafka.admin import ensure_topics
from ..settings import Settings
from .ledger import Ledger
from .netlab import NetLab, NetLabError
from .result import ScenarioResult, Suite
from .rig import ChaosStack, KafcelRig
from .scenarios import SCENARIOS, Scenario
from .watch import Watch
from .workload import Tally, make_workload, submit

__all__ = ["drive", "run_suite", "select"]

log = logging.getLogger("kafcel.chaos")

_PARTITIONS = 4
_WORK_MS = 2.0


def select(only: tuple[str, ...], *, broker: str = "kafka") -> list[Scenario]:
    """The scenarios ``only`` names (all by default) that run on ``broker``: faults of
    Apache Kafka's own nodes are left out on Tansu, and refused when asked for by name."""
    runs_here = [s for s in SCENARIOS if broker == "kafka" or not s.kafka_only]
    if not only:
        return runs_here
    known = {s.name for s in SCENARIOS} | {s.key for s in SCENARIOS}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise KafcelError(
            f"unknown scenario(s) {', '.join(unknown)}; known: "
            + ", ".join(sorted({s.name for s in SCENARIOS}))
        )
    chosen = [s for s in SCENARIOS if s.name in only or s.key in only]
    elsewhere = [s.name for s in chosen if s not in runs_here]
    if elsewhere:
        raise KafcelError(
            f"{', '.join(elsewhere)} fault(s) Apache Kafka's own nodes: run with --broker kafka"
        )
    return chosen


def chaos_settings(stack: ChaosStack, run: str) -> Settings:
    """Short timers so faults are noticed and repaired within seconds, not minutes."""
    return Settings(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        topic=f"chaos-{run}",
        group_id=f"chaos-{run}",
        partitions=_PARTITIONS,
        session_timeout_s=6.0,
        commit_interval_s=0.5,
        drain_timeout_s=20.0,
        once_lease_s=3.0,
        redispatch_after_s=8.0,
        queued_ttl_s=15.0,
        # Small enough that a task waits in Celery's queue less than redispatch_after_s.
        max_in_flight=400,
        max_record_bytes=65_536,
    )


def run_suite(
    *,
    n_tasks: int,
    scenarios: list[Scenario],
    on_progress: Callable[[str, int, int], None] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
    seed: int = 1,
    stall_s: float = 90.0,
    cancel: threading.Event | None = None,
    keep_logs: Path | None = None,
    broker: str = "kafka",
    brokers: int = 1,
    on_broker: Callable[[str], None] | None = None,
) -> Suite:
    """Run ``scenarios`` in order on ``broker`` (``kafka`` or ``tansu``); ``cancel`` ends
    the run (KeyboardInterrupt) cleanly. ``on_broker`` hears the broker's label once it
    runs.

    The logs of a scenario that fails are copied to ``keep_logs``, if given.
    """
    if n_tasks < 1:
        raise KafcelError(f"--tasks must be at least 1, got {n_tasks}")
    cancel = cancel or threading.Event()
    results: dict[int, ScenarioResult] = {}
    labels: list[str] = []
    # One stack per cluster size, each up only while its scenarios run.
    by_size: dict[int, list[int]] = {}
    for i, scenario in enumerate(scenarios):
        by_size.setdefault(max(brokers, scenario.brokers), []).append(i)
    with (
        contextlib.ExitStack() as cleanup,
        tempfile.TemporaryDirectory(prefix="kafcel-chaos-") as tmp,
    ):
        lab, lab_error = _open_netlab(scenarios)
        if lab is not None:
            # Closed after the stacks are down (the ExitStack unwinds after them).
            cleanup.callback(lab.close)
        host = lab.address if lab is not None else "127.0.0.1"
        for size, indexes in by_size.items():
            stack = ChaosStack(
                state_dir=Path(tmp) / f"{size}-node", broker=broker, brokers=size, host=host
            )
            try:
                stack.up()
                labels.append(stack.broker_label())
                if on_broker:
                    on_broker(labels[-1])
                for i in indexes:
                    scenario = scenarios[i]
                    slug = scenario.key.replace(":", "-").replace("@", "-")
                    log_dir = Path(tmp) / f"{i:02d}-{slug}"
                    stack.begin()
                    try:
                        if scenario.netns and lab is None:
                            raise NetLabError(lab_error)
                        result = run_scenario(
                            stack,
                            scenario,
                            n_tasks=n_tasks,
                            log_dir=log_dir,
                            seed=seed + i,
                            stall_s=stall_s,
                            on_progress=on_progress,
                            cancel=cancel,
                            netlab=lab if scenario.netns else None,
                        )
                    except NetLabError as exc:
                        # The row says why (not root, no netns here); the others still run.
                        result = _not_run(scenario, f"network partition unavailable: {exc}")
                    result.nodes = size
                    result.faults = list(stack.faults)
                    if not result.passed and keep_logs is not None and log_dir.exists():
                        target = keep_logs / slug
                        shutil.rmtree(target, ignore_errors=True)
                        shutil.copytree(log_dir, target)
                    results[i] = result
                    if on_result:
                        on_result(result)
            finally:
                stack.down()
    # The label of the first stack names the broker ("apache-kafka 4.4.0"); rows say nodes.
    return Suite(
        broker=labels[0] if labels else broker, results=[results[i] for i in sorted(results)]
    )


def _open_netlab(scenarios: list[Scenario]) -> tuple[NetLab | None, str]:
    """The run's NetLab when a scenario needs one, else why there is none."""
    if not any(s.netns for s in scenarios):
        return None, ""
    try:
        return NetLab(), ""
    except NetLabError as exc:
        return None, str(exc)


def _not_run(scenario: Scenario, note: str) -> ScenarioResult:
    return ScenarioResult(
        name=scenario.name,
        system=scenario.system,
        lost=0,
        duplicates=0,
        out_of_order=0,
        dlq_expected=0,
        dlq=0,
        peak_lag=None,
        drain_s=0.0,
        note=note,
    )


def run_scenario(
    stack: ChaosStack,
    scenario: Scenario,
    *,
    n_tasks: int,
    log_dir: Path,
    seed: int,
    stall_s: float,
    on_progress: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    netlab: NetLab | None = None,
) -> ScenarioResult:
    """``netlab``: each worker and bridge then runs in a namespace of its own."""
    run = uuid.uuid4().hex[:8]
    settings = chaos_settings(stack, run)
    workload = make_workload(
        run=run, n_tasks=n_tasks, poison_ratio=scenario.poison_ratio, seed=seed
    )
    ledger = Ledger(url=stack.ledger_url, run=run)
    if scenario.system == "kombu-kafka":
        from .kombu_run import run_kombu

        try:
            return run_kombu(
                stack, scenario, workload, ledger, log_dir, seed, stall_s, on_progress, cancel
            )
        finally:
            ledger.clear()
            ledger.close()
    ensure_topics(
        settings.bootstrap_servers,
        {t: _PARTITIONS for t in (settings.topic, settings.results_topic, settings.dlq_topic)},
    )
    rig = KafcelRig(
        stack=stack,
        settings=settings,
        log_dir=log_dir,
        consume=scenario.system == "kafcel-worker",
        celery_broker=scenario.celery_broker,
    )
    stop = threading.Event()
    try:
        for i in range(scenario.workers):
            rig.start_worker(netns=netlab.namespace(f"worker {i}") if netlab else None)
        for i in range(scenario.bridges):
            rig.start_bridge(netns=netlab.namespace(f"bridge {i}") if netlab else None)
        pace_s = scenario.submit_over_s / max(n_tasks, 1)
        tally = Tally()
        watch = Watch(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.group_id,
            topic=settings.topic,
            dlq_topic=settings.dlq_topic,
            workload=workload,
            ledger=ledger,
            cancel=cancel,
            reread_dlq=stack.broker == "tansu",
        )
        result = drive(
            scenario,
            stack,
            rig,
            watch,
            lambda: submit(
                settings,
                workload,
                work_ms=_WORK_MS,
                pace_s=pace_s,
                ledger=ledger,
                stop=stop,
                tally=tally,
            ),
            seed=seed,
            stop=stop,
            stall_s=stall_s,
            on_progress=on_progress,
            submit_progress=lambda: tally.queued / max(len(workload.sequence), 1),
        )
        result.redispatched = _redispatched(rig)
        result.broker = stack.celery_broker_label(scenario.celery_broker)
        return result
    finally:
        stop.set()
        rig.stop()
        try:
            if netlab is not None:
                netlab.release()
        except NetLabError as exc:
            # Said, not raised: the row is the run's result, a cleanup error is not.
            log.warning("could not remove the scenario's namespaces: %s", exc)
        finally:
            ledger.clear()
            ledger.close()


def drive(
    scenario: Scenario,
    stack: ChaosStack,
    rig: Any,
    watch: Watch,
    submit_all: Callable[[], None],
    *,
    seed: int,
    stop: threading.Event,
    stall_s: float,
    on_progress: Callable[[str, int, int], None] | None,
    submit_progress: Callable[[], float] | None = None,
) -> ScenarioResult:
    """Submit (in a thread), inject the fault (in another), watch until drained or stalled.
    The fault strikes by ``submit_progress`` (the share submitted) when the scenario says
    so, else by the share of effects done."""
    errors: list[BaseException] = []
    submit_errors: list[BaseException] = []
    started = time.monotonic()

    def submit_then_note() -> None:
        try:
            submit_all()
        except BaseException as exc:  # reported in the row rather than lost in a thread
            submit_errors.append(exc)
        else:
            stack.note("submitter done: every submit answered")

    submitter = threading.Thread(target=submit_then_note, name=f"submit-{scenario.name}")
    submitter.start()
    progress = watch.progress
    if scenario.faults_follow_submits and submit_progress is not None:
        progress = submit_progress
    fault = _start_fault(scenario, stack, rig, seed, stop, errors, progress)
    try:
        note = watch.until_drained(
            busy=lambda: submitter.is_alive() or (fault is not None and fault.is_alive()),
            stall_s=stall_s,
            on_progress=lambda done, total: on_progress and on_progress(scenario.name, done, total),
        )
    finally:
        # Also on Ctrl-C: both threads end before the stack they use goes down (a fault
        # restarting a node after `down` would leave that node behind).
        stop.set()
        submitter.join()
        if fault is not None:
            fault.join()
    drain_s = (watch.drained_at or time.monotonic()) - started
    if submit_errors:
        note = f"submit failed: {submit_errors[0]}"
    elif errors:
        note = f"fault failed: {errors[0]}"
    return watch.result(scenario, drain_s, note, redispatched=0)


def _start_fault(
    scenario: Scenario,
    stack: ChaosStack,
    rig: Any,
    seed: int,
    stop: threading.Event,
    errors: list[BaseException],
    progress: Callable[[], float],
) -> threading.Thread | None:
    if scenario.fault is None:
        return None
    fault = scenario.fault

    def inject() -> None:
        try:
            fault(stack, rig, random.Random(seed), stop, progress)
        except BaseException as exc:  # reported in the row rather than lost in a thread
            errors.append(exc)

    thread = threading.Thread(target=inject, name=f"fault-{scenario.name}", daemon=True)
    thread.start()
    return thread


def _redispatched(rig: KafcelRig) -> int:
    """Redispatches counted in the logs of what consumes the topic (bridges, or workers)."""
    kind, _ = rig.consumers
    total = 0
    for path in sorted(rig.log_dir.glob(f"{kind}*.log")):
        total += path.read_text(errors="replace").count("redispatching ")
    return total
