"""Prometheus metrics (``kafcel_*``) of the bridge and of the Celery workers.

Bridge: :class:`BridgeMetrics` is the bridge's :class:`~kafcel.bridge.events.MetricsSink`,
on a registry of its own (not prometheus_client's global one, so tests and embedders may
run several bridges in one process); :func:`start_bridge_metrics` serves it on
``--metrics-port``.

Workers: ``install(app)`` calls :func:`start_worker_metrics` on ``worker_init`` when
``KAFCEL_WORKER_METRICS_PORT`` is set. A prefork worker runs tasks in child processes, so
the counts live in prometheus_client's multiprocess files (one directory per worker) and
the main process serves their sum. With the port at 0 this module is never imported.

See docs/metrics.md for the list of metrics and a Grafana dashboard.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..errors import ConfigError

__all__ = [
    "LATENCY_BUCKETS_S",
    "MULTIPROC_DIR_ENV",
    "BridgeMetrics",
    "WorkerMetrics",
    "start_bridge_metrics",
    "start_worker_metrics",
    "stop_worker_metrics",
    "worker_process_ended",
]

log = logging.getLogger("kafcel.metrics")

# From a local dispatch (~1 ms) to a task that waited in a backlog or ran for minutes
# (10 min): one set of buckets for every latency, so dashboards can compare them.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

# prometheus_client's own switch to multiprocess mode; children inherit it through fork.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Children:
    """Labelled children of one metric, cached per label tuple.

    ``metric.labels(...)`` validates and takes a lock on every call; the bridge counts
    several events per record, so at tens of thousands of records a second the lookup
    matters more than the increment. Label sets are few (topics x tasks), so the cache
    stays small.
    """

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def get(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache.setdefault(labels, self._metric.labels(*labels))
        return child

    def remove(self, *labels: str) -> None:
        if self._cache.pop(labels, None) is not None:
            self._metric.remove(*labels)


# -- bridge --------------------------------------------------------------------------


class BridgeMetrics:
    """What the bridge counts, as Prometheus metrics (implements ``MetricsSink``).

    Statuses are lower-cased (``success``, ``failure``) like the workers' ``status`` label.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._consumed = _Children(
            Counter(
                "kafcel_records_consumed",
                "Records read from the task topic (valid or not).",
                ["topic", "task"],
                registry=r,
            )
        )
        self._dispatched = _Children(
            Counter(
                "kafcel_tasks_dispatched",
                "Tasks sent to Celery (a redispatch is counted apart).",
                ["topic", "task"],
                registry=r,
            )
        )
        self._settled = _Children(
            Counter(
                "kafcel_tasks_settled",
                "Records settled by their task's outcome, by outcome status.",
                ["topic", "task", "status"],
                registry=r,
            )
        )
        self._dead = _Children(
            Counter(
                "kafcel_dlq_records",
                "Records the bridge sent to the dead-letter topic.",
                ["topic", "task", "error_class", "stage"],
                registry=r,
            )
        )
        self._redispatched = _Children(
            Counter(
                "kafcel_redispatches",
                "Tasks sent to Celery again because no worker held them.",
                ["topic", "task"],
                registry=r,
            )
        )
        self._in_flight = Gauge(
            "kafcel_in_flight", "Records fetched but not settled yet.", registry=r
        )
        self._lag = _Children(
            Gauge(
                "kafcel_consumer_lag",
                "Records of the partition not committed yet (end offset - committed).",
                ["topic", "partition"],
                registry=r,
            )
        )
        self._dispatch_latency = _Children(
            Histogram(
                "kafcel_dispatch_latency_seconds",
                "From the record's Kafka timestamp to its task sent to Celery.",
                ["topic"],
                buckets=LATENCY_BUCKETS_S,
                registry=r,
            )
        )
        self._e2e_latency = _Children(
            Histogram(
                "kafcel_end_to_end_latency_seconds",
                "From the record's Kafka timestamp to its outcome settled in the bridge.",
                ["topic", "task"],
                buckets=LATENCY_BUCKETS_S,
                registry=r,
            )
        )
        self._gap_wait = Counter(
            "kafcel_offset_gap_wait_seconds",
            "Seconds partitions were held back looking for offsets not visible yet (on "
            "brokers that need the Tansu handling; never on Apache Kafka).",
            registry=r,
        )
        self._gap_wait_seen = 0.0
        # The bridge's CPU, memory and file descriptors, named under kafcel_ like the rest.
        ProcessCollector(namespace="kafcel_bridge", registry=r)
        self._lag_shown: set[tuple[str, str]] = set()
        self._server: WSGIServer | None = None

    def consumed(self, topic: str, task: str) -> None:
        self._consumed.get(topic, task).inc()

    def dispatched(self, topic: str, task: str, latency_s: float | None) -> None:
        self._dispatched.get(topic, task).inc()
        if latency_s is not None:
            self._dispatch_latency.get(topic).observe(latency_s)

    def settled(self, topic: str, task: str, status: str, e2e_s: float | None) -> None:
        self._settled.get(topic, task, status.lower()).inc()
        if e2e_s is not None:
            self._e2e_latency.get(topic, task).observe(e2e_s)

    def dead_lettered(self, topic: str, task: str, error_class: str, stage: str) -> None:
        self._dead.get(topic, task, error_class, stage).inc()

    def redispatched(self, topic: str, task: str) -> None:
        self._redispatched.get(topic, task).inc()

    def in_flight(self, count: int) -> None:
        self._in_flight.set(count)

    def lags(self, lag: Mapping[tuple[str, int], int]) -> None:
        # Every partition the bridge owns now. One it no longer owns loses its series, or
        # two bridges of one group would both report it and a sum over the group would
        # count its lag twice.
        shown = {(topic, str(partition)): n for (topic, partition), n in lag.items()}
        for labels in self._lag_shown - shown.keys():
            self._lag.remove(*labels)
        for labels, n in shown.items():
            self._lag.get(*labels).set(n)
        self._lag_shown = set(shown)

    def gap_wait(self, total_s: float) -> None:
        # The bridge keeps a running total; a counter takes increments.
        if total_s > self._gap_wait_seen:
            self._gap_wait.inc(total_s - self._gap_wait_seen)
            self._gap_wait_seen = total_s

    def close(self) -> None:
        """Stop serving ``/metrics`` (embedders and tests; the bridge just exits)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _serve(port: int, host: str, registry: CollectorRegistry, what: str, hint: str) -> WSGIServer:
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve {what} metrics on {host}:{port}: {exc.strerror or exc} "
            f"(another process holds the port?); choose another with {hint}"
        ) from exc
    log.info("%s metrics on http://%s:%d/metrics", what, host, port)
    return server


def start_bridge_metrics(*, port: int, host: str = "0.0.0.0") -> BridgeMetrics:
    """Serve a new :class:`BridgeMetrics` on ``http://host:port/metrics`` (daemon thread).

    Raises :class:`~kafcel.errors.ConfigError` if the port cannot be bound.
    """
    metrics = BridgeMetrics()
    metrics._server = _serve(
        port, host, metrics.registry, "bridge", "--metrics-port (KAFCEL_METRICS_PORT)"
    )
    return metrics


# -- workers -------------------------------------------------------------------------


class WorkerMetrics:
    """Task counts and timings of a worker's processes (the pool's children, or the main
    process with ``--pool solo``/``threads``).

    Built with no registry: in multiprocess mode each process writes its values to its
    own file, and the main process's ``MultiProcessCollector`` sums the files. Registering
    them as well would expose the serving process's own values a second time.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self._tasks = _Children(
            Counter(
                "kafcel_worker_tasks",
                "Attempts of kafcel tasks that ran, by how they ended (success/failure/retry).",
                ["task", "status"],
                registry=registry,
            )
        )
        self._skips = _Children(
            Counter(
                "kafcel_once_guard_skips",
                "Copies of a task id the once-guard did not run: done (finished before, "
                "its outcome re-announced) or busy (running elsewhere, checked again later).",
                ["task", "reason"],
                registry=registry,
            )
        )
        self._dead = _Children(
            Counter(
                "kafcel_worker_dlq_records",
                "Tasks that failed for good, written to the dead-letter topic by the worker.",
                ["task", "error_class"],
                registry=registry,
            )
        )
        self._e2e = _Children(
            Histogram(
                "kafcel_task_end_to_end_latency_seconds",
                "From the task's submission (Kafka record timestamp) to its final outcome.",
                ["task"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            )
        )
        self._runtime = _Children(
            Histogram(
                "kafcel_task_runtime_seconds",
                "Time a task's function ran, per attempt.",
                ["task"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            )
        )

    def attempted(self, task: str, status: str, started: float | None) -> None:
        """An attempt that began at ``started`` (``time.monotonic()``) ended: ``success``,
        ``failure`` or ``retry``. ``started`` is None for an attempt the worker refused to
        run (a task that kept killing its worker): counted, not timed."""
        self._tasks.get(task, status).inc()
        if started is not None:
            self._runtime.get(task).observe(time.monotonic() - started)

    def finished(
        self, task: str, status: str, started: float | None, submitted_ms: int | None
    ) -> None:
        """The attempt that gave the task's final outcome. ``submitted_ms``: the Kafka
        record's timestamp, which the bridge puts in the task's ``kafcel`` header (the
        clock of its own end-to-end latency); None (a task not sent by kafcel) leaves the
        observation out rather than guess it."""
        self.attempted(task, status, started)
        if submitted_ms:
            self._e2e.get(task).observe(max(time.time() - submitted_ms / 1000.0, 0.0))

    def skipped(self, task: str, reason: str) -> None:
        self._skips.get(task, reason).inc()

    def dead_lettered(self, task: str, error_class: str) -> None:
        self._dead.get(task, error_class).inc()


@dataclass
class _Served:
    metrics: WorkerMetrics
    server: WSGIServer
    port: int
    path: str
    owned_path: bool  # a directory we made (and remove), not one the user set
    owner_pid: int


# One per process: the multiprocess directory and prometheus_client's value class are
# process-wide, so a second install() (or a second app) shares the first one's metrics.
_served: _Served | None = None
_served_lock = threading.Lock()


def start_worker_metrics(*, port: int, host: str = "0.0.0.0") -> WorkerMetrics:
    """Switch this worker to multiprocess metrics and serve their sum on ``port``.

    Call it in the worker's main process before the pool forks (``worker_init``). Raises
    :class:`~kafcel.errors.ConfigError` if the port cannot be bound; nothing process-wide
    has changed then.
    """
    global _served
    with _served_lock:
        if _served is not None and _served.owner_pid == os.getpid():
            if _served.port != port:
                log.warning("worker metrics already on port %d; not on %d", _served.port, port)
            return _served.metrics
        # A directory per worker: files left by an earlier worker (same pids after a
        # restart) would be summed into this one's counts. A directory the user chose is
        # kept: they run multiprocess metrics of their own and own its lifecycle.
        path = os.environ.get(MULTIPROC_DIR_ENV, "")
        owned = not path
        if owned:
            path = tempfile.mkdtemp(prefix=f"kafcel-worker-metrics-{os.getpid()}-")
        else:
            os.makedirs(path, exist_ok=True)
        registry = CollectorRegistry()
        # prometheus_client's multiprocess helpers carry no type hints.
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        try:
            server = _serve(port, host, registry, "worker", "KAFCEL_WORKER_METRICS_PORT")
        except ConfigError:
            if owned:
                shutil.rmtree(path, ignore_errors=True)
            raise
        # Set for this process and, through fork, for the pool's children: every metric
        # value created from now on is written to <path>/<type>_<pid>.db.
        os.environ[MULTIPROC_DIR_ENV] = path
        # prometheus_client picks its value class once, when it is first imported, from
        # this variable; kafcel may have imported it before (and must not read the
        # environment at import), so the choice is redone here, before any worker metric
        # exists. A class that is already multiprocess (the user's variable was set at
        # import) is kept: a second one would open the same per-pid files and both would
        # write over each other's entries.
        if not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        metrics = WorkerMetrics()
        _served = _Served(metrics, server, port, path, owned, os.getpid())
        atexit.register(stop_worker_metrics)
        return metrics


def worker_process_ended(pid: int | None = None) -> None:
    """A pool process is exiting (``worker_process_shutdown``): drop its live gauges.

    kafcel's own worker metrics are counters and histograms, which must outlive the
    process (its tasks still happened); this is for gauges of the user's in ``livesum``
    style modes, which prometheus_client keeps per pid.
    """
    if _served is not None:
        mark_process_dead(pid or os.getpid(), _served.path)  # type: ignore[no-untyped-call]


def stop_worker_metrics() -> None:
    """Stop serving and remove the worker's metric files (main process, at exit).

    A no-op in pool children: they inherit the atexit hook through fork, and must not
    take the directory away from a worker that still runs.
    """
    global _served
    with _served_lock:
        served = _served
        if served is None or served.owner_pid != os.getpid():
            return
        _served = None
    served.server.shutdown()
    served.server.server_close()
    if served.owned_path:
        shutil.rmtree(served.path, ignore_errors=True)
