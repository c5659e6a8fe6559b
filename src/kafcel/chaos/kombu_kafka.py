"""The kombu-kafka rows' system: Celery on kombu's own Kafka transport, no kafcel.

:class:`KombuKafka` starts and kills the Celery worker of :mod:`kafcel.chaos.kombu_app`
and submits tasks through the transport's producer, so the chaos suite can inflict the
same faults on it as on kafcel and count the damage in the same ledger.

What the transport does with them (kombu 5.x ``kombu/transport/confluentkafka.py``): one
topic per queue (one partition), one consumer group per queue
(``<queue>-consumer-group``, from the earliest offset when it has no commit), and an ack
commits the consumer's whole position, so every message fetched before it counts as
done. A queue name is therefore good for one run: a second run on it resumes from the
first one's commit.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException
from kombu.exceptions import KombuError

from ..dev.procs import ManagedProcess, worker_argv
from ..errors import BrokerError, ConfigError, KafcelError
from ..kafka.config import KAFKA_LOG
from .kombu_app import (
    ASSIGNED_LOG,
    BOOTSTRAP_ENV,
    BROKER_ENV,
    QUEUE_ENV,
    REDIS_ENV,
    transport_options,
)
from .tasks import LEDGER_ENV

__all__ = ["KombuKafka"]

APP = "kafcel.chaos.kombu_app"
# Kafka's legal topic characters; kombu would also silently drop '@' from a queue name.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
# Covers a restart after SIGKILL: the coordinator first waits out the dead member's
# session (kombu_app sets 6 s; librdkafka's default would be 45 s).
_JOIN_TIMEOUT_S = 90.0
_READY_TIMEOUT_S = 60.0
_KILL_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 30.0
# A message the broker does not take fails the submit instead of blocking it for
# librdkafka's default of five minutes.
_DELIVERY_TIMEOUT_MS = 30_000


def _brokers(bootstrap_servers: object) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as pairs, each checked."""
    if not isinstance(bootstrap_servers, str) or not bootstrap_servers.strip():
        raise ConfigError(f"bootstrap_servers must be 'host:port', got {bootstrap_servers!r}")
    brokers = []
    for item in bootstrap_servers.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or "/" in host or not port.isdigit():
            raise ConfigError(
                f"bootstrap_servers must be 'host:port[,host:port...]', got {bootstrap_servers!r}"
            )
        if not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"bootstrap_servers port must be 1 to 65535, got {bootstrap_servers!r}"
            )
        brokers.append((host, int(port)))
    return brokers


def _redis_server(label: str, url: object) -> tuple[str, str]:
    if not isinstance(url, str) or urlsplit(url).scheme not in _REDIS_SCHEMES:
        raise ConfigError(f"{label} must be a redis://, rediss:// or unix:// URL, got {url!r}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{label} has an invalid port: {url!r}") from exc
    return (parts.hostname or "", str(port or parts.path))


class KombuKafka:
    """A Celery worker on kombu's ``confluentkafka://`` transport, and a client for it."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        redis_url: str,
        ledger_url: str,
        queue: str,
        log_dir: Path,
        concurrency: int = 2,
        worker_app: str = APP,
    ) -> None:
        brokers = _brokers(bootstrap_servers)
        results = _redis_server("redis_url", redis_url)
        # FLUSHALL empties every database of a server, so a ledger sharing the result
        # backend's server would lose the evidence to the fault it is meant to record.
        if _redis_server("ledger_url", ledger_url) == results:
            raise ConfigError(
                f"ledger_url must name another Redis server than redis_url ({redis_url!r})"
            )
        if not isinstance(queue, str) or not _TOPIC.fullmatch(queue) or queue in (".", ".."):
            raise ConfigError(
                f"queue must be a Kafka topic name (letters, digits, '.', '_', '-'), got {queue!r}"
            )
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ConfigError(f"log_dir must be a path, got {log_dir!r}")
        log_path = Path(log_dir)
        if log_path.exists() and not log_path.is_dir():
            raise ConfigError(f"log_dir {log_path} exists and is not a directory")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, got {concurrency!r}")
        self.bootstrap_servers = ",".join(f"{host}:{port}" for host, port in brokers)
        # kombu's URL names one broker; transport_options() hands librdkafka them all.
        host, port = brokers[0]
        self.broker_url = f"confluentkafka://{host}:{port}"
        self.redis_url = redis_url
        self.ledger_url = ledger_url
        self.queue = queue
        self.group = f"{queue}-consumer-group"
        self.log_dir = log_path
        self.concurrency = concurrency
        self.worker_app = worker_app
        self._worker: ManagedProcess | None = None
        self._starts = 0
        self._app: Celery | None = None
        self._delivery_errors: list[str] = []

    # -- worker ---------------------------------------------------------------------

    @property
    def worker(self) -> ManagedProcess | None:
        """The current worker process (None before the first start)."""
        return self._worker

    def start_worker(self) -> None:
        """Start the worker; return once its consumer has been assigned the topic.

        Celery logs "ready" before kombu has even subscribed; the app logs
        :data:`~kafcel.chaos.kombu_app.ASSIGNED_LOG` once the consumer holds the partition.
        """
        if self._worker is not None and self._worker.alive():
            raise KafcelError(f"the kombu-kafka worker is already running (pid {self._worker.pid})")
        self._starts += 1
        env = {
            **os.environ,
            BROKER_ENV: self.broker_url,
            BOOTSTRAP_ENV: self.bootstrap_servers,
            REDIS_ENV: self.redis_url,
            QUEUE_ENV: self.queue,
            LEDGER_ENV: self.ledger_url,
        }
        # The venv's editable install makes kafcel importable; this covers a source tree.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        argv = worker_argv(
            self.worker_app,
            queue=self.queue,
            concurrency=self.concurrency,
            name=f"kombu-{self._starts}",
        )
        # A log per start: waiting for "ready" must not find the previous start's line.
        log_path = self.log_dir / f"kombu-worker-{self._starts}.log"
        worker = ManagedProcess(name="kombu-kafka worker", argv=argv, env=env, log_path=log_path)
        self._worker = worker.start()
        try:
            worker.wait_for_log("ready.", timeout_s=_READY_TIMEOUT_S)
            worker.wait_for_log(ASSIGNED_LOG, timeout_s=_JOIN_TIMEOUT_S)
        except BaseException:
            self._kill(worker)
            raise

    def kill_worker(self) -> None:
        """SIGKILL the worker and its prefork children at once; return once it is reaped."""
        if self._worker is not None:
            self._kill(self._worker)

    def _kill(self, worker: ManagedProcess) -> None:
        if worker.proc is None:
            return
        # The worker leads its own session, so its group is it and its prefork children.
        # Signalled as one, no child finishes a task after its parent died; and a child
        # can outlive the parent, so the group is signalled even with the parent gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        try:
            worker.proc.wait(_KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise KafcelError(
                f"the kombu-kafka worker (pid {worker.pid}) survived SIGKILL"
            ) from exc

    # -- client ---------------------------------------------------------------------

    def _client(self) -> Celery:
        if self._app is None:
            options = transport_options(self.bootstrap_servers)
            # librdkafka's lines go through logging, as from every other kafcel client.
            options["kafka_common_config"] = {
                **options.get("kafka_common_config", {}),
                "logger": KAFKA_LOG,
            }
            options["kafka_producer_config"] = {
                "message.timeout.ms": _DELIVERY_TIMEOUT_MS,
                # kombu flushes after every message and never looks at the outcome, so
                # a failed delivery is only visible here.
                "on_delivery": self._on_delivery,
            }
            # No result backend: the submitter reads nothing back, and a flushed Redis
            # must not fail a submit.
            self._app = Celery(
                "kafcel_chaos_kombu_client",
                broker=self.broker_url,
                set_as_current=False,
                config_source={
                    "broker_transport_options": options,
                    "broker_connection_retry_on_startup": True,
                    "task_serializer": "json",
                    "accept_content": ["json"],
                    "task_default_queue": self.queue,
                },
            )
        return self._app

    def _on_delivery(self, err: RdKafkaError | None, _msg: Any) -> None:
        # Called from kombu's flush() in the submitting thread, right after the produce.
        if err is not None:
            self._delivery_errors.append(str(err))

    def submit(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[str]:
        """Send each ``(task name, args)`` to the queue's topic; return the task ids."""
        app = self._client()
        ids: list[str] = []
        for name, args in calls:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"task name must be a non-empty string, got {name!r}")
            try:
                result = app.send_task(name, args=tuple(args), queue=self.queue)
            except (KafkaException, KombuError, OSError, BufferError) as exc:
                raise BrokerError(
                    f"kombu-kafka refused {name} after {len(ids)} of {len(calls)} tasks: {exc}"
                ) from exc
            failed, self._delivery_errors = self._delivery_errors, []
            if failed:
                raise BrokerError(
                    f"kombu-kafka did not deliver {name} after {len(ids)} of {len(calls)} "
                    f"tasks: {failed[0]}"
                )
            ids.append(str(result.id))
        return ids

    def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL) and close the submitting client."""
        if self._worker is not None:
            self._worker.stop(timeout_s=_STOP_TIMEOUT_S)
        if self._app is not None:
            self._app.close()
            self._app = None
