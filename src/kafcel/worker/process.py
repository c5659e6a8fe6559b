"""One worker process's clients: its Kafka producer, its once-guard and lease keeper, its
dead-letter writers; and what it writes with them (done markers, dead letters, outcomes).

Created lazily and again after a fork: prefork children must not share their parent's
sockets or librdkafka threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from celery.exceptions import Ignore
from confluent_kafka import KafkaException, Producer
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from ..deadletter import DeadLetterWriter
from ..errors import ConfigError, DeliveryError, KafcelError
from ..guard.lease import LeaseKeeper
from ..guard.once import OnceGuard
from ..kafka.config import client_config
from ..kafka.delivery import Writes
from ..protocol.deadletter import DeadLetter
from ..protocol.outcome import Origin, Outcome
from ..settings import Settings

if TYPE_CHECKING:
    from ..telemetry.metrics import WorkerMetrics

__all__ = ["WorkerProcess"]

log = logging.getLogger("kafcel.worker")


class WorkerProcess:
    """Per-process clients; created lazily because prefork children must not share them."""

    def __init__(
        self,
        settings: Settings | None,
        *,
        new_producer: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._settings = settings
        self._new_producer = new_producer
        self._pid = -1
        self._producer: Producer | None = None
        self._producer_config: dict[str, Any] = {}
        self._dead_letters: dict[str, DeadLetterWriter] = {}
        self._guard: OnceGuard | None = None
        self._keeper: LeaseKeeper | None = None
        self._inherited: list[Producer] = []
        self._creating = threading.Lock()
        # A fork while another thread held it would leave the child's copy held for good.
        os.register_at_fork(after_in_child=self._new_lock)
        # Set on worker_init when worker_metrics_port is; None costs one test per task.
        self.metrics: WorkerMetrics | None = None

    def start_metrics(self) -> None:
        """Serve this worker's metrics if ``worker_metrics_port`` is set (main process)."""
        port = (self._settings or Settings.from_env()).worker_metrics_port
        if not port:
            return
        from ..telemetry.metrics import start_worker_metrics  # only imported when metrics are on

        try:
            self.metrics = start_worker_metrics(port=port)
        except ConfigError as exc:
            # Tasks matter more than their counts: the worker runs on, without metrics.
            log.error("kafcel: %s; this worker runs without metrics", exc)

    def _new_lock(self) -> None:
        self._creating = threading.Lock()

    def _ensure(self) -> tuple[Settings, Producer, OnceGuard]:
        if self._pid != os.getpid() or self._producer is None or self._guard is None:
            # The threads pool's tasks reach for the clients at once: one set of them, or
            # a task claims its id with one guard's owner token and ends with another's.
            with self._creating:
                if self._pid != os.getpid() or self._producer is None or self._guard is None:
                    self._create()
        assert self._settings is not None
        assert self._producer is not None and self._guard is not None
        return self._settings, self._producer, self._guard

    def _create(self) -> None:
        if self._producer is not None:
            # A client inherited through fork must never be destroyed here: librdkafka
            # would wait for threads that only exist in the parent.
            self._inherited.append(self._producer)
        settings = self._settings or Settings.from_env()
        self._settings = settings
        config: dict[str, Any] = {
            **client_config(settings.bootstrap_servers),
            "enable.idempotence": True,
            "acks": "all",
            # Outcomes of a process's tasks share requests (broker CPU); the wait only
            # delays the settle, never a task.
            "linger.ms": settings.outcome_batch_ms,
        }
        config.update(settings.librdkafka())
        self._producer = self._new_producer(config)
        self._producer_config = config
        self._dead_letters = {}
        # Bounded waits: a half-open connection must not hang the task that wants to
        # finish.
        timeout_s = max(min(settings.once_lease_s / 3, 5.0), 0.5)
        client: redis.Redis[bytes] = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        # Renewals on their own connection, one try each, well within a renewal period:
        # a task's end waits for a renewal in flight, and a renewal that cannot get
        # through must fail while the next one still has time to.
        renew_timeout_s = settings.once_lease_s / 6
        renew_client: redis.Redis[bytes] = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=renew_timeout_s,
            socket_connect_timeout=renew_timeout_s,
            retry=RedisRetry(NoBackoff(), 0),
        )
        self._guard = OnceGuard(
            client=client,
            renew_client=renew_client,
            lease_s=settings.once_lease_s,
            done_ttl_s=settings.once_done_ttl_s,
        )
        # Threads do not survive fork: each process renews its own leases.
        self._keeper = LeaseKeeper(self._guard)
        self._pid = os.getpid()

    @property
    def guard(self) -> OnceGuard:
        return self._ensure()[2]

    @property
    def keeper(self) -> LeaseKeeper:
        self._ensure()
        assert self._keeper is not None
        return self._keeper

    @property
    def max_attempts(self) -> int:
        return self._ensure()[0].max_attempts

    def end_attempt(
        self, task_id: str, *, retry_in_s: float | None = None, retries: int = 0
    ) -> None:
        """Our attempt ended without an outcome: free the id (or hold it for a retry).

        Never raises: the caller is re-raising the task's own exception (Retry, Reject),
        which must reach Celery; a lease left behind expires by itself.
        """
        try:
            with self.keeper.letting_go(task_id):
                if retry_in_s is None:
                    self.guard.release(task_id)
                else:
                    self.guard.wait_retry(task_id, retry_in_s, retries=retries)
        except KafcelError as exc:
            log.warning("kafcel: could not end the attempt of %s: %s", task_id, exc)

    def hand_over(self, task_id: str) -> None:
        """The attempt replaced itself: the id goes to the replacement (never raises)."""
        try:
            with self.keeper.letting_go(task_id):
                self.guard.hand_over(task_id, self._ensure()[0].queued_ttl_s)
        except KafcelError as exc:
            log.warning("kafcel: could not hand %s over to its replacement: %s", task_id, exc)

    def record_done(self, outcome: Outcome, *, dead_letter_pending: bool = False) -> bool:
        """Write the done marker; False (logged) if Redis could not take it. Raise
        :class:`Ignore` if another attempt holds the id: that attempt started after our
        lease lapsed, and its outcome is the one to announce: ours is neither recorded nor
        published (no dead letter either), and the message is acked.
        """
        try:
            with self.keeper.letting_go(outcome.task_id):
                recorded = self.guard.finish(outcome, dead_letter_pending=dead_letter_pending)
        except KafcelError:
            log.exception("kafcel: could not record %s as done", outcome.task_id)
            return False
        if not recorded:
            log.error(
                "kafcel: %s is held by another attempt: this attempt's outcome (%s) is "
                "dropped, the holder announces its own",
                outcome.task_id,
                outcome.status,
            )
            raise Ignore()
        return True

    def dead_letter_written(self, task_id: str) -> None:
        """Clear the marker's pending flag; never raises (at worst a later copy of the id
        writes a second dead letter)."""
        try:
            self.guard.dead_letter_written(task_id)
        except KafcelError as exc:
            log.warning("kafcel: dead letter of %s written, marker not updated: %s", task_id, exc)

    def write_dead_letter(self, origin: Origin, value: bytes, letter: DeadLetter) -> None:
        """Write the dead letter and wait until Kafka has it, then clear the done marker's
        pending flag; raise DeliveryError if Kafka did not take it.

        The same writer as the bridge's: a copy too large for the producer sheds its
        value, then its headers, then its key, so a record near the size limit still
        leaves a dead letter instead of requeueing its task forever.
        """
        settings, producer, _ = self._ensure()
        topic = origin.dlq_topic or settings.dlq_topic
        writer = self._dead_letters.get(topic)
        if writer is None:
            writer = self._dead_letters[topic] = DeadLetterWriter(
                writes=Writes(producer=producer), topic=topic, config=self._producer_config
            )
        key = origin.key.encode("utf-8", "surrogateescape") if origin.key is not None else None
        writer.write_and_wait(letter, value=value, key=key, headers=[], timeout_s=30)
        if letter.task_id is not None:
            self.dead_letter_written(letter.task_id)

    def publish(self, origin: Origin, outcome: Outcome, *, wait: bool = True) -> None:
        """Write the outcome; raise DeliveryError on failure.

        The outcome is what lets the bridge commit, so a failure's goes only once its dead
        letter is on Kafka. With ``wait=False`` (a success, its done marker already in
        Redis) the outcome is handed to the producer and the task ends without waiting for
        Kafka: if the process dies before it is delivered, the bridge finds the done marker
        after ``redispatch_after_s`` and a copy re-announces the outcome without running
        the task again.
        """
        settings, _, _ = self._ensure()
        key = origin.key.encode("utf-8", "surrogateescape") if origin.key is not None else None
        topic = origin.results_topic or settings.results_topic
        # The partition of the request: the bridge owning it reads only that one.
        self._deliver(topic, outcome.encode(), key, wait=wait, partition=origin.partition)

    def flush_outcomes(self) -> None:
        """Deliver lingering outcomes (process shutdown); never raises."""
        if self._producer is not None and self._pid == os.getpid():
            try:
                left = self._producer.flush(10)
            except KafkaException as exc:
                left = len(self._producer)
                log.warning("kafcel: flushing outcomes failed: %s", exc)
            if left:
                log.warning("kafcel: %d outcome(s) undelivered at exit; re-announced later", left)

    def _deliver(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        *,
        wait: bool = True,
        partition: int = -1,
    ) -> None:
        _, producer, _ = self._ensure()
        errors: list[str] = []

        def delivered(err: Any, _: Any) -> None:
            if err is not None:
                errors.append(str(err))
                if not wait:
                    log.warning(
                        "kafcel: an outcome for %s was not delivered (%s); the bridge "
                        "re-announces it from the done marker",
                        topic,
                        err,
                    )

        try:
            producer.produce(
                topic, value=value, key=key, partition=partition, on_delivery=delivered
            )
        except (BufferError, KafkaException) as exc:
            raise DeliveryError(f"cannot write to {topic}: {exc}") from exc
        if not wait:
            producer.poll(0)  # serve earlier delivery reports; this one lingers
            return
        remaining = producer.flush(30)
        if remaining or errors:
            raise DeliveryError(f"record for {topic} not delivered: {errors or 'timed out'}")
