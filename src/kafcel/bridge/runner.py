"""The bridge loop: consume envelopes, dispatch Celery tasks, settle on outcomes, commit.

One thread does everything (fetch, validate, dispatch, read outcomes, commit), so the
offset tracker needs no locks and rebalance callbacks, which librdkafka runs inside
``consume()``, see a consistent state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Hashable

import redis
from celery import Celery
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError

from ..deadletter import DeadLetterWriter
from ..errors import ConfigError, DispatchHeld, KafkaError, RecordRejected
from ..guard.once import OnceGuard
from ..kafka.config import client_config, producer_config
from ..kafka.delivery import Writes
from ..protocol.envelope import Envelope
from ..protocol.headers import header_list
from ..protocol.outcome import REVOKED, REVOKED_BY_OPERATOR, Outcome
from ..settings import Settings
from .assignment import Assignment
from .chores import RedisChores
from .clients import BridgeClients, consumer_config
from .deadletter import DeadLetters
from .dispatch import Dispatch, declare_queues, make_dispatch
from .events import BridgeEvents
from .filter import TaskFilter
from .group import finish_joining
from .held import HeldDispatches
from .markers import CommittedMarkers
from .offsets import Offsets
from .ordering import OrderingGate
from .outcomes import OutcomeReader
from .parking import Scheduling
from .pending import Pending
from .presence import BridgeStats, Presence, eta_held, log_report, positions
from .publish import batch_length
from .redispatch import Redispatcher, backend_state
from .schedule import Parked, Parker
from .sending import Sending
from .sequence import SequenceGuard, guard, position, put_back
from .tracker import TP, Budget, OffsetTracker

__all__ = ["Bridge"]

log = logging.getLogger("kafcel.bridge")

_FETCH_BATCH = 500
_POLL_S = 0.02
_BUSY_POLL_S = 0.005
_REPORT_EVERY_S = 10.0
_PUBLISH_EVERY_S = 2.0


class Bridge(Sending):
    """Runs until :meth:`stop` (or SIGTERM/SIGINT when run in the main thread); ``role``
    "worker" when a Celery worker runs it (:mod:`kafcel.worker.consume`)."""

    def __init__(
        self,
        *,
        app: Celery,
        settings: Settings,
        on_ready: Callable[[], None] | None = None,
        clients: BridgeClients | None = None,
        role: str = "bridge",
    ) -> None:
        if not isinstance(app, Celery):
            raise ConfigError("app must be a Celery app")
        self.app = app
        self._clients = clients or BridgeClients()
        self.settings = settings
        self.stats = BridgeStats()
        self.events = BridgeEvents()
        self._on_ready = on_ready
        self._stop = threading.Event()
        self._ran_all = False
        self._tracker = OffsetTracker()
        self._pending = Pending()
        self._gate: OrderingGate[Dispatch] = OrderingGate(mode=settings.ordering)
        # Set by _open once the broker said what it is (kafka/broker.py).
        self._tansu = True
        self._seq: SequenceGuard
        client: redis.Redis[bytes] = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        self._guard = OnceGuard(
            client=client, lease_s=settings.once_lease_s, done_ttl_s=settings.once_done_ttl_s
        )
        self._redispatch = Redispatcher(
            after_s=settings.redispatch_after_s,
            guard=self._guard,
            backend_state=lambda task_id: backend_state(app, task_id),
        )
        # Admitted records of this loop turn, sent to Celery together (one round trip).
        self._outbox: list[Dispatch] = []
        self._held = HeldDispatches()
        markers = CommittedMarkers()
        self._chores = RedisChores(
            guard=self._guard, markers=markers, queued_ttl_s=settings.queued_ttl_s
        )
        # Lanes (bridge/lanes.py) change it while the bridge runs.
        self.budget = Budget(records=settings.max_in_flight, size=settings.max_in_flight_bytes)
        self._offsets = Offsets(tracker=self._tracker, markers=markers, budget=self.budget)
        self._publisher = None
        self._presence = Presence(client=client, group=settings.group_id, role=role)
        self._assignment = Assignment(scheduled_topic=settings.scheduled_topic)
        self._joined = False
        self._assignment_changed = False
        app.loader.import_default_modules()
        app.finalize(auto=True)
        self._filter = TaskFilter(
            registered=list(app.tasks.keys()), allow=settings.allow, deny=settings.deny
        )
        self._base_conf = client_config(settings.bootstrap_servers, settings.librdkafka())
        self._producer_conf = producer_config(settings.bootstrap_servers, settings.librdkafka())
        self._consumer: Consumer | None = None
        self._results: OutcomeReader | None = None
        self._scheduling: Scheduling
        self._producer: Producer | None = None
        self._dead: DeadLetters
        self._writes: Writes

    # -- lifecycle -----------------------------------------------------------------

    def stop(self, *, ran_all: bool = False) -> None:
        """Ask the bridge to stop fetching, drain and exit (safe from a signal handler).
        ``ran_all``: whatever will run of the dispatched tasks has run (a consuming
        worker's pool has drained), so the drain waits only for the outcomes published
        until now, not for records that no one will run."""
        self._ran_all = ran_all
        self._stop.set()

    def run(self) -> int:
        s = self.settings
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self._open()
        if self._on_ready:
            self._on_ready()
        last_commit = last_report = time.monotonic()
        last_publish = 0.0
        while not self._stop.is_set():
            self._step(fetch=True)
            now = time.monotonic()
            if now - last_commit >= s.commit_interval_s:
                self._commit(asynchronous=True)
                last_commit = now
            if now - last_publish >= _PUBLISH_EVERY_S:
                self._check_losses()
                self._publish_presence()
                last_publish = now
            if now - last_report >= _REPORT_EVERY_S:
                log_report(self.stats, self._tracker)
                last_report = now
        self._drain()
        return 0

    def _open(self) -> None:
        s = self.settings
        c = self._clients
        try:
            c.prepare_group(s)
            c.ensure_topics(s)
            kind = c.broker(s)
        except KafkaException as exc:
            raise KafkaError(f"cannot start the bridge: {exc}") from exc
        self._tansu = kind.needs_tansu_handling
        log.info("broker: %s%s", kind.name, ", with the Tansu handling" if self._tansu else "")
        self._seq = guard(lambda: self._consumer, gap_wait_s=s.gap_wait_s, tansu=self._tansu)
        if s.metrics_port:
            from ..telemetry.metrics import start_bridge_metrics

            self.events.metrics = start_bridge_metrics(port=s.metrics_port)
        try:
            self._producer = c.producer(self._producer_conf)
            self._writes = Writes(producer=self._producer)
            writer = DeadLetterWriter(
                writes=self._writes, topic=s.dlq_topic, config=self._producer_conf
            )
            self._dead = DeadLetters(
                writer=writer,
                assignment=self._assignment,
                events=self.events,
                settled=self._dead_lettered,
            )
            self._results = c.outcomes(self._base_conf, s, kind)
            # Followed even with parking off: tasks parked before must still run.
            self._scheduling = Scheduling(
                reader=c.scheduled(self._base_conf, s, kind),
                parker=Parker(writes=self._writes, topic=s.scheduled_topic),
                tracker=self._tracker,
                assignment=self._assignment,
                budget=self.budget,
                admit=self._admit,
                settle=lambda tp, offset: self._settle(tp, offset, None),
                due=self._handle_parked,
            )
            conf = consumer_config(s, self._offsets.on_commit, tansu=self._tansu)
            self._consumer = c.consumer(conf)
            self._consumer.subscribe(
                [s.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except KafkaException as exc:
            raise KafkaError(f"cannot start the bridge consumer: {exc}") from exc
        log.info("bridge started: topic=%s group=%s", s.topic, s.group_id)

    def _drain(self) -> None:
        assert self._consumer is not None and self._producer is not None
        s = self.settings
        with contextlib.suppress(KafkaException):
            self._consumer.pause(self._consumer.assignment())
        deadline = time.monotonic() + s.drain_timeout_s
        log.info("draining %d in-flight task(s)", self._tracker.in_flight())
        assert self._results is not None
        ends = self._results.ends() if self._ran_all else None
        ran = False
        while self._tracker.in_flight() > 0 and time.monotonic() < deadline and not ran:
            self._step(fetch=False)
            ran = ends is not None and self._results.reached(ends)
        left = self._tracker.in_flight()
        if left and ran:
            log.info("%d record(s) not run here: the partitions' next owner runs them", left)
        elif left:
            log.warning("drain timeout: %d task(s) unsettled; they will be re-read", left)
        self._offsets.commit_before_leaving(self._consumer, within_s=s.session_timeout_s)
        self.stats.commits = self._offsets.commits
        if self._tansu:
            finish_joining(
                self._consumer, lambda: self._joined, timeout_s=2 * s.session_timeout_s + 10
            )
        # close() leaves the group; the revoke callback commits once more, synchronously.
        self._consumer.close()
        if self._results is not None:
            self._results.close()
        self._scheduling.close()
        self._producer.flush(10)
        if self._publisher is not None:
            self._publisher.close()
        self._presence.leave()
        log.info("bridge stopped: %s", self.stats.as_dict())

    def _publish_presence(self) -> None:
        assert self._consumer is not None
        held = eta_held(self._tracker, self._pending.lists())
        samples = positions(
            self._consumer,
            self._tracker,
            self._assignment.owned,
            paused=self._offsets.paused,
            eta_held=held,
            held=self._held.partitions(),
        )
        self._presence.publish(self.stats.as_dict(), sorted(self._assignment.owned), samples)
        lag = {tp: n for tp, r in samples.items() if (n := r.lag) is not None}
        self.events.gauges(
            in_flight=self.stats.in_flight, lag=lag, gap_wait_s=self.stats.gap_wait_s
        )

    # -- the loop ------------------------------------------------------------------

    def _step(self, *, fetch: bool) -> None:
        assert self._consumer is not None and self._producer is not None
        self._retry_held()
        if fetch:
            self._seq.tick()
            # Never fetch past max_in_flight by more than one record.
            room = self.budget.records - self._tracker.in_flight()
            # consume(n, timeout) waits for n records or the timeout: wait for the first
            # only, then take what is already fetched, so a lone record is not held back.
            # With tasks in flight their outcomes are read between fetches: wait less.
            wait_s = _POLL_S if self._tracker.in_flight() == 0 else _BUSY_POLL_S
            msgs = self._consumer.consume(1, timeout=wait_s)
            if msgs and room > 1:
                msgs += self._consumer.consume(min(_FETCH_BATCH, room) - 1, timeout=0)
            for index, msg in enumerate(msgs):
                if self._tracker.in_flight_bytes() >= self.budget.size:
                    # Past the byte budget by at most the record that crossed it: what
                    # was fetched beyond is read again once memory is free.
                    owned = self._assignment.owned
                    put_back(
                        self._consumer,
                        self._seq,
                        [m for m in msgs[index:] if (m.topic(), m.partition()) in owned],
                    )
                    break
                self._handle(msg)
            self._flush_outbox()
        else:
            # Paused: consume() still serves rebalance callbacks and heartbeats.
            self._consumer.consume(1, timeout=_POLL_S)
        self._read_outcomes()
        self._scheduling.turn(self._consumer)
        self._redispatch_lost()
        self._producer.poll(0)
        # Dead letters and parked copies Kafka refused, while still wanted.
        self._writes.retry_due()
        # Outcomes, orphans and DLQ acknowledgements release keys' next records: they
        # leave in this turn, before a consume() can revoke their partitions.
        self._flush_outbox()
        self._chores.flush()
        if fetch:
            # While draining, partitions stay paused whatever the in-flight count.
            self._offsets.backpressure(
                self._consumer,
                assignment_changed=self._assignment_changed,
                broker_down=self._held.broker_down,
            )
            self._assignment_changed = False
            self.stats.paused = self._offsets.paused
        in_flight = self._tracker.in_flight()
        if in_flight == 0 and self.stats.in_flight > 0:
            log.info("idle: all %d fetched record(s) settled", self.stats.settled)
        self.stats.in_flight = in_flight
        self.stats.waiting = self._gate.waiting
        self.stats.held = len(self._held)
        self.stats.dlq = self._dead.written
        self.stats.scheduled = len(self._scheduling)
        self.stats.parked = self._scheduling.parked
        self.stats.count_gaps(
            [self._seq, self._scheduling.sequence]
            + ([self._results.sequence] if self._results is not None else [])
        )

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == RdKafkaError._PARTITION_EOF:
                return
            if err.fatal():
                raise KafkaError(f"fatal consumer error: {err}")
            log.warning("consumer error: %s", err)
            return
        tp, offset = position(msg)
        if tp not in self._assignment.owned:
            # Fetched before a revoke that ran inside a later consume() of this turn:
            # the partition's next owner reads it from the commit.
            return
        size = len(msg.value() or b"") + len(msg.key() or b"")
        if not self._seq.admit(tp, offset) or not self._tracker.add(tp, offset, size):
            return
        self.stats.consumed += 1
        envelope = self._valid(msg)
        self.events.consumed(msg, None if envelope is None else envelope.task)
        if envelope is None:
            return
        slot = self._gate.slot_for(tp, msg.key())
        fence = self._assignment.fence(tp)
        item = make_dispatch(msg, envelope, tp, offset, slot, self.settings, fence=fence)
        if item.wait_s() > self.settings.schedule_after_s > 0:
            self._scheduling.park(item)
        else:
            self._admit(item)

    def _admit(self, item: Dispatch) -> None:
        """To Celery in this turn, or behind its key's running task."""
        if self._gate.admit(item.slot, item):
            self._outbox.append(item)

    def _valid(self, msg: Message) -> Envelope | None:
        """The record's envelope if it may become a task; else it goes to the DLQ."""
        try:
            envelope = Envelope.decode(msg.value(), max_bytes=self.settings.max_record_bytes)
            self._filter.check(envelope.task)
        except RecordRejected as exc:
            self._dead.record(msg, exc)
            return None
        return envelope

    def _handle_parked(self, msg: Message) -> None:
        tp, offset = position(msg)
        parked = Parked.from_headers(header_list(msg))
        if parked is None:
            self._dead.record(
                msg, RecordRejected("not a task kafcel parked (no kafcel.parked.* headers)")
            )
            return
        origin_tp = (parked.topic, parked.partition)
        if origin_tp not in self._assignment.owned:
            return  # its task partition was revoked this turn: the next owner has it
        envelope = self._valid(msg)
        if envelope is None:
            return
        # Ordered and fenced with the records of the task partition it came from.
        slot = self._gate.slot_for(origin_tp, msg.key())
        fence = self._assignment.fence(tp)
        item = make_dispatch(
            msg, envelope, tp, offset, slot, self.settings, fence=fence, parked=parked
        )
        self._admit(item)

    def _flush_outbox(self) -> None:
        # A refusal dead-letters its record, which may release the key's next one into
        # the outbox again: loop until it stays empty.
        if self._held.broker_down:
            self._held.hold_all(self._outbox)
            self._outbox = []
        while self._outbox:
            items = self._outbox[: batch_length(self._outbox)]
            del self._outbox[: len(items)]
            answers = self._publish(items)
            for item, refused in zip(items, answers, strict=True):
                if isinstance(refused, DispatchHeld):
                    self._held.hold(item, refused)
                    continue
                if refused is not None:
                    # Retrying would stall the partition: the record goes to the DLQ.
                    self._dead.item(item, refused)
                    continue
                self._pending.add(item)
                self._redispatch.dispatched(item.task_id, not_before_s=item.wait_s())
                self._chores.queued(item.task_id)
                self.stats.dispatched += 1
                self.events.dispatched(item)

    def _check_losses(self) -> None:
        """Notice Celery's messages lost while the queued marks still vouch for them: a
        FLUSHALL or Redis restart (kombu lost its queue bindings too: messages published
        since are dropped without an error), or a RabbitMQ restart under queues or
        messages that do not survive one."""
        redis = self._chores.data_lost()
        if not redis and (self._publisher is None or not self._publisher.messages_maybe_lost()):
            return
        what = "Redis lost its data (FLUSHALL or restart)" if redis else (
            "the connection to Celery's RabbitMQ broke, and its queues do not all survive "
            "a restart"
        )  # fmt: skip
        s = self.settings
        log.warning("%s: every unsettled task is checked again in %.0fs", what, s.once_lease_s)
        if redis:
            declare_queues(self.app, self._pending.queues())
        self._redispatch.recheck_all(after_s=s.once_lease_s)

    def _redispatch_lost(self) -> None:
        resend, orphans = self._redispatch.due()
        for n, task_id in enumerate(resend):
            items = self._pending.get(task_id)
            if not items:
                continue
            refused = self._resend(items[0])
            if refused is None:
                self.events.redispatched(items[0])
                self._chores.queued(task_id)
                self.stats.redispatched += 1
            elif isinstance(refused, DispatchHeld) and refused.broker_down:
                # The rest would fail alike, each after a connection attempt of its own.
                for later in resend[n:]:
                    self._redispatch.not_sent(later)
                break
        for orphan in orphans:
            items = self._pending.get(orphan.task_id)
            if not items:
                continue
            # Settled from the result backend's word: no worker will announce it.
            log.warning("settling %s from the result backend: %s", orphan.task_id, orphan.state)
            self._on_outcome(orphan.outcome(items[0].envelope.task))

    def _dead_lettered(
        self, tp: TP, offset: int, slot: Hashable | None, task_id: str | None
    ) -> None:
        self._settle(tp, offset, task_id)
        self._release(slot)

    # -- outcomes and offsets ------------------------------------------------------

    def _read_outcomes(self) -> None:
        assert self._results is not None
        for outcome in self._results.read():
            self._on_outcome(outcome)
        self._results.watch_starvation(expecting=bool(self._pending))

    def _on_outcome(self, outcome: Outcome) -> None:
        answered = self._pending.answer(outcome)
        if answered is None:
            return
        items, finished = answered
        if finished:
            self._redispatch.settled([outcome.task_id])
        if outcome.duplicate:
            self.stats.duplicates += 1
        # An operator's revoke is a choice, not a failure: it settles like any final
        # outcome. Expired or unknown to the worker (nobody chose that) is dead-lettered.
        dead = outcome.status == REVOKED and (
            outcome.error_class != REVOKED_BY_OPERATOR or self.settings.dlq_revoked
        )
        for item in items:
            if dead:
                # Never ran: the original bytes go to the DLQ, and the record settles
                # when that write is acknowledged.
                reason = RecordRejected(outcome.error_message or "revoked")
                self._dead.item(item, reason, error_class=outcome.error_class or "TaskRevoked")
                continue
            self.events.settled(item, outcome)
            self._settle(item.tp, item.offset, item.task_id)
            self._release(item.slot)

    def _release(self, slot: Hashable | None) -> None:
        # The key's next record may go now: its predecessor's outcome is final.
        following = self._gate.release(slot)
        if following is not None:
            self._outbox.append(following)

    def _settle(self, tp: TP, offset: int, task_id: str | None) -> None:
        if self._tracker.settle(tp, offset):
            self.stats.settled += 1
            if task_id is not None:
                self._offsets.markers.settled(tp, offset, task_id)

    def _commit(self, *, asynchronous: bool, only: list[TP] | None = None) -> None:
        assert self._consumer is not None
        if asynchronous and not self._tansu:
            # Called between fetching turns only: past what the last turn handled.
            self._offsets.skip_markers(self._consumer, self._assignment.owned)
        self._offsets.commit(self._consumer, asynchronous=asynchronous, only=only)
        self.stats.commits = self._offsets.commits

    # -- rebalance -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned: %s", [(p.topic, p.partition) for p in partitions])
        self._assignment_changed = True
        self._joined = True
        tps = [(p.topic, p.partition) for p in partitions]
        for tp in tps:
            # Whatever an earlier assignment left (nothing, after a clean revoke) must not
            # make the re-read look seen.
            self._tracker.revoke(tp)
            self._seq.forget(tp)
        self._assignment.assign(tps)
        assert self._results is not None
        self._results.follow(p for _, p in tps)
        self._scheduling.follow(consumer, tps)
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            log.warning("could not read committed offsets on assign: %s", exc)
            return
        for p in committed:
            self._assignment.owned[(p.topic, p.partition)] = p.offset
            if p.offset >= 0:
                self._seq.expect((p.topic, p.partition), p.offset)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        log.info("revoked: %s", tps)
        self._joined = False  # a rejoin follows; leaving during it would wedge Tansu
        tps += self._assignment.parked(tps)
        self._commit(asynchronous=False, only=tps)
        self._offsets.unpause_leaving(consumer, partitions)
        self._forget(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        log.warning("lost without commit: %s", tps)
        self._joined = False
        self._offsets.unpause_leaving(consumer, partitions)
        self._forget(tps + self._assignment.parked(tps))

    def _forget(self, tps: list[TP]) -> None:
        gone = set(tps)
        # Not sent yet: the next owner sends them (sending them too would run a key's
        # records side by side if the partition came back here).
        self._outbox = [item for item in self._outbox if item.tp not in gone]
        self._held.forget(gone)
        self._offsets.markers.forget(gone)
        if self._results is not None:
            self._results.unfollow(p for t, p in gone if t == self.settings.topic)
        self._scheduling.forget(gone, self.settings.scheduled_topic)
        for tp in tps:
            self._tracker.revoke(tp)
            self._seq.forget(tp)
        self._assignment.revoke(tps)
        self._gate.drop(tps)
        # The next owner re-reads these records; our outcomes for them no longer matter.
        self._redispatch.settled(self._pending.forget(gone))
