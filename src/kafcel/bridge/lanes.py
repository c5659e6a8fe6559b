"""Several task topics ("lanes"), each read by a bridge loop of its own.

A lane is a task topic with its own consumer, its own results, DLQ and scheduled topics
(or shared results and DLQ topics) and its weight's share of ``max_in_flight`` and
``max_in_flight_bytes``. Why a loop per lane rather than one consumer of every topic:
a backlog on one topic can then fill only its own lane's share of records in flight,
so the other lanes' fetches, dispatches and outcomes never wait behind it; and each
loop keeps the one-topic rules the guarantees were proven with (co-partitioned
companions, fences, the scheduled partitions that go with a task partition). Each lane
sends its tasks to its own Celery queue when ``lane_queues`` names one, so that the
backlog does not wait in front of the lane's tasks in Celery's queue either.

The lanes of one process join one consumer group (``group_id``): Kafka spreads each
topic's partitions over the members that read it. Patterns are matched again every
``topics_refresh_s``; a topic that appears gets a lane, and the shares are divided
anew, so the process never holds more than ``max_in_flight`` records.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import Celery

from ..errors import KafcelError
from ..kafka.lanes import lanes_of
from ..settings import Settings
from .clients import BridgeClients
from .events import MetricsSink
from .runner import Bridge

__all__ = ["Lanes", "loop_for"]

log = logging.getLogger("kafcel.bridge")

_WATCH_S = 0.2
_N = TypeVar("_N", int, float)


class _LaneMetrics:
    """One lane's view of the process's ``/metrics``: counters go straight through; the
    gauges and the gap-wait total are summed over the lanes."""

    def __init__(self, sink: MetricsSink, lanes: _Totals, topic: str) -> None:
        self._sink = sink
        self._totals = lanes
        self._topic = topic

    def consumed(self, topic: str, task: str) -> None:
        self._sink.consumed(topic, task)

    def dispatched(self, topic: str, task: str, latency_s: float | None) -> None:
        self._sink.dispatched(topic, task, latency_s)

    def settled(self, topic: str, task: str, status: str, e2e_s: float | None) -> None:
        self._sink.settled(topic, task, status, e2e_s)

    def dead_lettered(self, topic: str, task: str, error_class: str, stage: str) -> None:
        self._sink.dead_lettered(topic, task, error_class, stage)

    def redispatched(self, topic: str, task: str) -> None:
        self._sink.redispatched(topic, task)

    def in_flight(self, count: int) -> None:
        self._sink.in_flight(self._totals.put(self._totals.in_flight, self._topic, count))

    def lags(self, lag: Mapping[tuple[str, int], int]) -> None:
        with self._totals.lock:
            self._totals.lag[self._topic] = dict(lag)
            merged = {tp: n for lane in self._totals.lag.values() for tp, n in lane.items()}
            self._sink.lags(merged)

    def gap_wait(self, total_s: float) -> None:
        self._sink.gap_wait(self._totals.put(self._totals.gap_wait_s, self._topic, total_s))


class _Totals:
    """The lanes' gauges, by lane (each lane's loop reports from its own thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.gap_wait_s: dict[str, float] = {}
        self.lag: dict[str, dict[tuple[str, int], int]] = {}

    def put(self, by_lane: dict[str, _N], topic: str, value: _N) -> _N:
        with self.lock:
            by_lane[topic] = value
            return sum(by_lane.values(), start=type(value)(0))


class Lanes:
    """Runs a :class:`Bridge` per lane until :meth:`stop` (or SIGTERM/SIGINT in the main
    thread); fails as a bridge does when a lane fails (the others drain and stop)."""

    def __init__(
        self,
        *,
        app: Celery,
        settings: Settings,
        on_ready: Callable[[], None] | None = None,
        clients: BridgeClients | None = None,
        role: str = "bridge",
        lanes: Callable[[Settings], list[Settings]] = lanes_of,
    ) -> None:
        self.app = app
        self.settings = settings
        self._on_ready = on_ready
        self._clients = clients
        self._role = role
        self._lanes_of = lanes
        self._bridges: dict[str, Bridge] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._ready: set[str] = set()
        self._failed: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ran_all = False
        self._metrics: MetricsSink | None = None
        self._totals = _Totals()

    @property
    def bridges(self) -> dict[str, Bridge]:
        """The running lanes' loops, by task topic."""
        with self._lock:
            return dict(self._bridges)

    def stop(self, *, ran_all: bool = False) -> None:
        """As :meth:`Bridge.stop`, for every lane."""
        self._ran_all = ran_all
        self._stop.set()

    def wake_held(self) -> None:
        for bridge in self.bridges.values():
            bridge.wake_held()

    def run(self) -> int:
        s = self.settings
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        if s.metrics_port:
            from ..telemetry.metrics import start_bridge_metrics

            self._metrics = start_bridge_metrics(port=s.metrics_port)
        patterns = s.has_lane_patterns()
        next_match = 0.0
        try:
            while not self._stop.is_set() and not self._failed:
                if time.monotonic() >= next_match:
                    self._start_lanes()
                    next_match = time.monotonic() + s.topics_refresh_s if patterns else float("inf")
                self._stop.wait(_WATCH_S)
        finally:
            self._stop_all()
        if self._failed:
            raise self._failed[0]
        return 0

    def _start_lanes(self) -> None:
        try:
            lanes = {lane.topic: lane for lane in self._lanes_of(self.settings)}
        except KafcelError as exc:
            if not self._bridges:
                raise
            log.warning("cannot match the topics' patterns again: %s", exc)
            return
        if not lanes and not self._bridges:
            log.warning(
                "no topic matches %s yet: looking again in %.0fs",
                ",".join(self.settings.topics),
                self.settings.topics_refresh_s,
            )
        new = [topic for topic in lanes if topic not in self._bridges]
        if not new:
            return
        # Every lane's share among the lanes there are now: the sum stays the budget.
        running = self.bridges
        for topic, bridge in running.items():
            if topic in lanes:
                bridge.budget.records = lanes[topic].max_in_flight
                bridge.budget.size = lanes[topic].max_in_flight_bytes
        if running:
            log.info(
                "in-flight shares now: %s",
                ", ".join(f"{t} {lane.max_in_flight}" for t, lane in lanes.items()),
            )
        # All registered before any starts: "ready" means every lane's loop is.
        threads = [self._add(lanes[topic]) for topic in new]
        for thread in threads:
            thread.start()

    def _add(self, lane: Settings) -> threading.Thread:
        topic = lane.topic
        bridge = Bridge(
            app=self.app,
            settings=lane,
            clients=self._clients,
            role=self._role,
            on_ready=lambda: self._lane_ready(topic),
        )
        if self._metrics is not None:
            bridge.events.metrics = _LaneMetrics(self._metrics, self._totals, topic)
        thread = threading.Thread(
            target=self._run_lane, args=(topic, bridge), name=f"kafcel-lane-{topic}", daemon=True
        )
        with self._lock:
            self._bridges[topic] = bridge
            self._threads[topic] = thread
        log.info(
            "lane %s: results %s, DLQ %s, Celery queue %s, up to %d in flight",
            topic,
            lane.results_topic,
            lane.dlq_topic,
            lane.queue or "by Celery's routing",
            lane.max_in_flight,
        )
        return thread

    def _run_lane(self, topic: str, bridge: Bridge) -> None:
        try:
            bridge.run()
        except BaseException as exc:
            log.error("lane %s stopped: %s", topic, exc)
            self._failed.append(exc)
            self._stop.set()

    def _lane_ready(self, topic: str) -> None:
        with self._lock:
            self._ready.add(topic)
            ready = self._ready >= set(self._bridges)
        if ready and self._on_ready is not None:
            on_ready, self._on_ready = self._on_ready, None
            on_ready()

    def _stop_all(self) -> None:
        bridges = self.bridges
        for bridge in bridges.values():
            bridge.stop(ran_all=self._ran_all)
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            # Each lane drains within its drain_timeout_s and commits before it leaves.
            thread.join()


def loop_for(settings: Settings, **kwargs: Any) -> Bridge | Lanes:
    """The loop that reads ``settings``' task topics: one :class:`Bridge`, or
    :class:`Lanes` when ``topics`` is set. Takes Bridge's keyword arguments."""
    if settings.topics:
        return Lanes(settings=settings, **kwargs)
    return Bridge(settings=settings, **kwargs)
