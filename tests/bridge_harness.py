"""The bridge loop in-process, on fakes the test drives step by step.

Like dramatiq's stub broker: Kafka is a dict of partition logs holding real
``confluent_kafka.Message`` objects; the consumer reads them from its position, and
rebalances, commit acknowledgements and producer deliveries happen only when the test
says so, inside the bridge's own calls (``consume()``, ``poll()``), as librdkafka runs
its callbacks. Celery's broker is a publisher that records what it was given and
refuses or fails on request. Everything else is the real bridge: tracker, ordering
gate, sequence guard, dead-letter writer, the once-guard on the test stack's Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import KafkaError as RdKafkaError

from kafcel.bridge.clients import BridgeClients
from kafcel.bridge.dispatch import Dispatch
from kafcel.bridge.held import HeldDispatches
from kafcel.bridge.runner import Bridge
from kafcel.bridge.sequence import SequenceGuard
from kafcel.errors import DispatchHeld, DispatchRefused
from kafcel.kafka.broker import APACHE_KAFKA, BrokerKind
from kafcel.protocol.outcome import Outcome
from kafcel.settings import Settings

TP = tuple[str, int]


def envelope(task: str, *args: Any, **fields: Any) -> bytes:
    return json.dumps({"v": 1, "task": task, "args": list(args), **fields}).encode()


class FakeKafka:
    """Partition logs and the committed offsets of one group."""

    def __init__(self) -> None:
        self.logs: dict[TP, list[Message]] = defaultdict(list)
        self.committed: dict[TP, int] = {}
        self.order: list[str] = []  # topic of each appended record, across topics

    def append(
        self,
        tp: TP,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> Message:
        log = self.logs[tp]
        msg = Message(
            topic=tp[0],
            partition=tp[1],
            offset=len(log),
            key=key,
            value=value,
            headers=headers,
            timestamp=(TIMESTAMP_CREATE_TIME, timestamp_ms or int(time.time() * 1000)),
        )
        log.append(msg)
        self.order.append(tp[0])
        return msg


class FakeConsumer:
    def __init__(self, kafka: FakeKafka, conf: dict[str, Any]) -> None:
        self.kafka = kafka
        self._on_commit: Callable[..., None] | None = conf.get("on_commit")
        self._positions: dict[TP, int] = {}
        self._paused: set[TP] = set()
        # (kind, partitions, the consume() call from which it is served)
        self._events: deque[tuple[str, list[TP], int]] = deque()
        self._commit_acks: deque[list[TopicPartition]] = deque()
        self._callbacks: dict[str, Callable[..., None]] = {}
        self.commits: list[dict[TP, int]] = []
        self.closed = False
        self.polls = 0  # consume() calls: what keeps a member in its group
        # The group rebalances: synchronous commits are refused until this many polls.
        self.rebalancing_until_poll = 0

    # -- what the test orders -------------------------------------------------------

    def assign(self, tps: Iterable[TP], *, after_polls: int = 0) -> None:
        """Rebalance: ``tps`` are assigned in the bridge's next consume() call, or in the
        one ``after_polls`` calls later (librdkafka runs callbacks in any consume())."""
        self._events.append(("assign", list(tps), self.polls + 1 + after_polls))

    def revoke(self, tps: Iterable[TP], *, after_polls: int = 0) -> None:
        self._events.append(("revoke", list(tps), self.polls + 1 + after_polls))

    def lose(self, tps: Iterable[TP], *, after_polls: int = 0) -> None:
        self._events.append(("lost", list(tps), self.polls + 1 + after_polls))

    # -- the Consumer API the bridge uses ---------------------------------------------

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self._callbacks = callbacks

    def _serve(self) -> None:
        while self._commit_acks:
            acked = self._commit_acks.popleft()
            if self._on_commit is not None:
                self._on_commit(None, acked)
        while self._events and self._events[0][2] <= self.polls:
            kind, tps, _ = self._events.popleft()
            parts = [TopicPartition(t, p) for t, p in tps]
            if kind == "assign":
                self._callbacks["on_assign"](self, parts)
                for tp in tps:
                    self._positions[tp] = max(self.kafka.committed.get(tp, 0), 0)
            else:
                self._callbacks["on_revoke" if kind == "revoke" else "on_lost"](self, parts)
                for tp in tps:
                    # The pause flag stays: librdkafka keeps a partition's pause across a
                    # revoke or loss and a later re-assignment (librdkafka #1849,
                    # confluent-kafka-go #193); only resume() clears it.
                    self._positions.pop(tp, None)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.polls += 1
        self._serve()
        out: list[Message] = []
        for tp in sorted(self._positions):
            if tp in self._paused:
                continue
            log = self.kafka.logs[tp]
            while self._positions[tp] < len(log) and len(out) < num_messages:
                out.append(log[self._positions[tp]])
                self._positions[tp] += 1
        return out

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self._positions)]

    def pause(self, parts: list[TopicPartition]) -> None:
        self._paused.update((p.topic, p.partition) for p in parts)

    def resume(self, parts: list[TopicPartition]) -> None:
        self._paused.difference_update((p.topic, p.partition) for p in parts)

    def committed(self, parts: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        found = self.kafka.committed
        return [
            TopicPartition(p.topic, p.partition, found.get((p.topic, p.partition), OFFSET_INVALID))
            for p in parts
        ]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        if not asynchronous and self.polls < self.rebalancing_until_poll:
            raise KafkaException(RdKafkaError(RdKafkaError.REBALANCE_IN_PROGRESS))
        done = {(p.topic, p.partition): p.offset for p in offsets}
        self.kafka.committed.update(done)
        self.commits.append(done)
        if asynchronous:
            self._commit_acks.append(list(offsets))

    def seek(self, part: TopicPartition) -> None:
        self._positions[(part.topic, part.partition)] = part.offset

    def position(self, parts: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(p.topic, p.partition, self._positions.get((p.topic, p.partition), -1))
            for p in parts
        ]

    def get_watermark_offsets(
        self, part: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.kafka.logs[(part.topic, part.partition)])

    def close(self) -> None:
        if self._positions:
            self._callbacks["on_revoke"](
                self, [TopicPartition(t, p) for t, p in sorted(self._positions)]
            )
        self._positions.clear()
        self.closed = True


class FakeProducer:
    """Queues what is produced; delivery reports fire in ``poll()`` once the test acks or
    fails them, as librdkafka's do."""

    def __init__(self, kafka: FakeKafka, conf: dict[str, Any]) -> None:
        self.kafka = kafka
        self.max_bytes = int(conf.get("message.max.bytes", 1_000_000))
        self.waiting: list[tuple[TP, bytes | None, bytes | None, Any, Callable[..., None]]] = []
        self._reports: list[tuple[Callable[..., None], Any, Message]] = []
        # A worker's producer: flush() has the broker answer at once, as ``verdict`` says
        # (None: acknowledged, else the error code of the delivery report).
        self.auto = False
        self.verdict: Callable[[str], int | None] = lambda topic: None
        # Runs before each produce(): a test raises here to die at that step.
        self.before_produce: Callable[[str], None] = lambda topic: None

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Any = None,
        on_delivery: Callable[..., None] | None = None,
        partition: int = -1,
    ) -> None:
        self.before_produce(topic)
        size = (
            len(value or b"")
            + len(key or b"")
            + sum(len(k) + len(v or b"") for k, v in headers or ())
        )
        if size > self.max_bytes:
            raise KafkaException(RdKafkaError(RdKafkaError.MSG_SIZE_TOO_LARGE))
        # Where it lands: the partition asked for, else 0 (one partition is enough here).
        where = (topic, max(partition, 0))
        self.waiting.append((where, value, key, headers, on_delivery or (lambda *_: None)))

    def ack(self, n: int | None = None) -> None:
        """The broker acknowledges the first ``n`` waiting records (all by default)."""
        n = len(self.waiting) if n is None else n
        batch, self.waiting = self.waiting[:n], self.waiting[n:]
        for where, value, key, headers, cb in batch:
            msg = self.kafka.append(where, value, key=key, headers=headers)
            self._reports.append((cb, None, msg))

    def fail(self, code: int, n: int | None = None) -> None:
        n = len(self.waiting) if n is None else n
        batch, self.waiting = self.waiting[:n], self.waiting[n:]
        for (topic, _), value, key, headers, cb in batch:
            msg = Message(topic=topic, value=value, key=key, headers=headers)
            self._reports.append((cb, RdKafkaError(code), msg))

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for cb, err, msg in reports:
            cb(err, msg)
        return len(reports)

    def flush(self, timeout: float = -1) -> int:
        """As librdkafka's: until nothing waits, records produced by the delivery
        callbacks it serves included."""
        self.poll()
        while self.auto and self.waiting:
            batch, self.waiting = self.waiting, []
            for where, value, key, headers, cb in batch:
                topic = where[0]
                code = self.verdict(topic)
                if code is None:
                    msg = self.kafka.append(where, value, key=key, headers=headers)
                    self._reports.append((cb, None, msg))
                else:
                    failed = Message(topic=topic, value=value, key=key, headers=headers)
                    self._reports.append((cb, RdKafkaError(code), failed))
            self.poll()
        return len(self.waiting)

    def __len__(self) -> int:
        return len(self.waiting)


class FakeOutcomes:
    def __init__(self) -> None:
        self.queue: list[Outcome] = []
        self.sequence = SequenceGuard(seek=lambda tp, offset: True, gap_wait_s=0)
        self.followed: set[int] = set()

    def follow(self, partitions: Iterable[int]) -> None:
        self.followed.update(partitions)

    def unfollow(self, partitions: Iterable[int]) -> None:
        self.followed.difference_update(partitions)

    def read(self) -> list[Outcome]:
        out, self.queue = self.queue, []
        return out

    def watch_starvation(self, *, expecting: bool) -> None:
        pass

    def close(self) -> None:
        pass


class FakeScheduled:
    """No parked tasks here: scheduling runs on the real stack (test_schedule.py)."""

    def __init__(self) -> None:
        self.sequence = SequenceGuard(seek=lambda tp, offset: True, gap_wait_s=0)

    def __len__(self) -> int:
        return 0

    def follow(self, starts: dict[int, int]) -> None:
        pass

    def unfollow(self, partitions: Iterable[int]) -> None:
        pass

    def read(self) -> list[Message]:
        return []

    def due(self, *, limit: int) -> list[Message]:
        return []

    def stale(self) -> list[Message]:
        return []

    def again(self, msgs: Iterable[Message]) -> None:
        pass

    def close(self) -> None:
        pass


class FakePublisher:
    """Celery's broker: keeps what it is given, refuses or holds records on request."""

    def __init__(self) -> None:
        self.sent: list[Dispatch] = []
        self.refuse: Callable[[Dispatch], str | None] = lambda item: None
        self.hold: Callable[[Dispatch], str | None] = lambda item: None
        self.down = False
        self.round_trips = 0
        self.probes = 0

    def publish(self, items: list[Dispatch]) -> list[DispatchRefused | DispatchHeld | None]:
        self.round_trips += 1
        out: list[DispatchRefused | DispatchHeld | None] = []
        for item in items:
            if self.down:
                out.append(DispatchHeld("Celery broker unavailable: refused", broker_down=True))
            elif (held := self.hold(item)) is not None:
                out.append(DispatchHeld(held))
            elif (reason := self.refuse(item)) is not None:
                out.append(DispatchRefused(reason))
            else:
                self.sent.append(item)
                out.append(None)
        return out

    def reachable(self, *, timeout_s: float) -> bool:
        self.probes += 1
        return not self.down

    def messages_maybe_lost(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def offsets(self) -> list[int]:
        return [item.offset for item in self.sent]


class BridgeHarness:
    """A real :class:`Bridge` on fakes; ``turn()`` runs one pass of its loop."""

    def __init__(self, *, app: Celery, settings: Settings) -> None:
        self.kafka = FakeKafka()
        self.outcomes = FakeOutcomes()
        self.publisher = FakePublisher()
        self.consumer: FakeConsumer | None = None
        self.producer: FakeProducer | None = None
        self.settings = settings

        def consumer(conf: dict[str, Any]) -> FakeConsumer:
            self.consumer = FakeConsumer(self.kafka, conf)
            return self.consumer

        def producer(conf: dict[str, Any]) -> FakeProducer:
            self.producer = FakeProducer(self.kafka, conf)
            return self.producer

        clients = BridgeClients(
            ensure_topics=lambda s: None,
            consumer=consumer,  # type: ignore[arg-type]
            producer=producer,  # type: ignore[arg-type]
            broker=lambda s: BrokerKind(APACHE_KAFKA),
            outcomes=lambda conf, s, kind: self.outcomes,  # type: ignore[arg-type,return-value]
            publisher=lambda app: self.publisher,  # type: ignore[arg-type,return-value]
            scheduled=lambda conf, s, kind: FakeScheduled(),  # type: ignore[arg-type,return-value]
        )
        self.bridge = Bridge(app=app, settings=settings, clients=clients)
        self.now = 0.0  # the clock of the bridge's retries, moved by the test
        self.bridge._held = HeldDispatches(clock=lambda: self.now)
        self.bridge._open()
        self._stop = threading.Event()

    @property
    def c(self) -> FakeConsumer:
        assert self.consumer is not None
        return self.consumer

    @property
    def p(self) -> FakeProducer:
        assert self.producer is not None
        return self.producer

    def turn(self, n: int = 1) -> None:
        for _ in range(n):
            self.bridge._step(fetch=True)

    def answer(self, item: Dispatch, status: str = "SUCCESS") -> None:
        """The worker's outcome for a dispatched record reaches the bridge."""
        self.outcomes.queue.append(
            Outcome(task_id=item.task_id, task=item.envelope.task, status=status, fence=item.fence)
        )

    def dlq(self) -> list[Message]:
        return self.kafka.logs[(self.settings.dlq_topic, 0)]

    def in_flight(self, tp: TP) -> int:
        return self.bridge._tracker.in_flight(tp)
