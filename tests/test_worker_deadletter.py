"""A failed task's dead letter is never lost, whatever stops its worker on the way.

The worker's failure path runs in-process, with its once-guard on the test stack's Redis
and its Kafka producer a fake that acknowledges, refuses or dies at the step a test
picks (tests/bridge_harness.py). After each fault, the next delivery of the same request
(Celery's requeue, the bridge's redispatch) must leave a dead letter on Kafka before the
outcome that settles the record, without running the task again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from confluent_kafka import KafkaError as RdKafkaError

from kafcel.dev import DevStack
from kafcel.protocol.deadletter import MAX_TEXT_CHARS, parse_dlq_headers
from kafcel.protocol.headers import header_list
from kafcel.protocol.outcome import FAILURE, MAX_OUTCOME_BYTES, Origin, Outcome
from kafcel.settings import Settings
from kafcel.worker import WorkerProcess
from kafcel.worker.guarded import guard_task, never_ran

from .bridge_harness import FakeKafka, FakeProducer

pytestmark = pytest.mark.timeout(60)

app = Celery("worker-deadletter")
ran: list[Any] = []


class Killed(BaseException):
    """The process dies here (nothing after this line of the worker runs)."""


@app.task(name="wdl.fail", bind=True)
def fail(self: Task, item: Any, message_bytes: int = 0) -> None:
    ran.append(item)
    raise ValueError("m" * message_bytes or "boom")


_UNGUARDED = fail.run


@dataclass
class Worker:
    kafka: FakeKafka
    producer: FakeProducer
    state: WorkerProcess
    settings: Settings

    def origin(self) -> Origin:
        return Origin(
            topic=self.settings.topic,
            partition=0,
            offset=7,
            key="k",
            results_topic=self.settings.results_topic,
            dlq_topic=self.settings.dlq_topic,
            fence="bridge.1",
        )

    def deliver(self, task_id: str, *args: Any) -> type[BaseException]:
        """One delivery of the request to the guarded task; what it raised."""
        origin = self.origin()
        fail.push_request(
            id=task_id, kafcel=origin.to_header(), retries=0, delivery_info={"routing_key": "q"}
        )
        try:
            fail.run(*args)
        except BaseException as exc:
            return type(exc)
        finally:
            fail.pop_request()
        raise AssertionError("the task did not raise")

    def topic(self, name: str) -> list[Any]:
        return self.kafka.logs[(name, 0)]

    def dead_letters(self) -> list[Any]:
        return self.topic(self.settings.dlq_topic)

    def outcomes(self) -> list[Outcome]:
        return [Outcome.decode(m.value()) for m in self.topic(self.settings.results_topic)]

    def settled_after_dead_letter(self) -> bool:
        """The first outcome on Kafka follows a dead letter."""
        order = [t for t in self.kafka.order if t != self.settings.topic]
        return self.settings.dlq_topic in order[: order.index(self.settings.results_topic)]


@pytest.fixture()
def worker(stack: DevStack) -> Iterator[Worker]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers="fake:9092", redis_url=stack.redis_url, topic=f"w-{run}")
    kafka = FakeKafka()
    made: list[FakeProducer] = []

    def new_producer(conf: dict[str, Any]) -> FakeProducer:
        producer = FakeProducer(kafka, conf)
        producer.auto = True
        made.append(producer)
        return producer

    state = WorkerProcess(settings, new_producer=new_producer)  # type: ignore[arg-type]
    assert state.guard is not None  # opens the producer
    fail.run = _UNGUARDED  # each test's guard has its own state
    guard_task(fail, state)
    ran.clear()
    yield Worker(kafka, made[0], state, settings)


def die_on(topic: str) -> Callable[[str], None]:
    def check(produced_to: str) -> None:
        if produced_to == topic:
            raise Killed()

    return check


def test_dies_before_writing_the_dead_letter(worker: Worker) -> None:
    task_id = str(uuid.uuid4())
    worker.producer.before_produce = die_on(worker.settings.dlq_topic)
    assert worker.deliver(task_id, 1) is Killed
    assert worker.dead_letters() == [] and worker.outcomes() == []

    worker.producer.before_produce = lambda topic: None
    assert worker.deliver(task_id, 1) is Ignore
    assert ran == [1], "the task ran once"
    assert len(worker.dead_letters()) == 1
    (outcome,) = worker.outcomes()
    assert outcome.status == FAILURE and outcome.fence == "bridge.1"
    assert worker.settled_after_dead_letter()


def test_dead_letter_write_refused(worker: Worker) -> None:
    task_id = str(uuid.uuid4())
    dlq = worker.settings.dlq_topic
    worker.producer.verdict = lambda t: RdKafkaError._MSG_TIMED_OUT if t == dlq else None
    assert worker.deliver(task_id, 2) is Reject
    assert worker.dead_letters() == [] and worker.outcomes() == []

    worker.producer.verdict = lambda t: None
    assert worker.deliver(task_id, 2) is Ignore
    assert ran == [2]
    assert len(worker.dead_letters()) == 1 and len(worker.outcomes()) == 1
    assert worker.settled_after_dead_letter()


def test_dies_after_the_dead_letter_before_the_marker_knows(worker: Worker) -> None:
    task_id = str(uuid.uuid4())

    def die(task_id: str) -> None:
        raise Killed()

    worker.state.dead_letter_written = die  # type: ignore[method-assign]
    assert worker.deliver(task_id, 3) is Killed
    assert len(worker.dead_letters()) == 1 and worker.outcomes() == []

    del worker.state.dead_letter_written
    assert worker.deliver(task_id, 3) is Ignore
    assert ran == [3]
    # The marker could not tell: at least once, here twice, never none.
    assert len(worker.dead_letters()) == 2 and len(worker.outcomes()) == 1
    assert worker.settled_after_dead_letter()


def test_dies_before_the_outcome(worker: Worker) -> None:
    task_id = str(uuid.uuid4())
    worker.producer.before_produce = die_on(worker.settings.results_topic)
    assert worker.deliver(task_id, 4) is Killed
    assert len(worker.dead_letters()) == 1 and worker.outcomes() == []

    worker.producer.before_produce = lambda topic: None
    assert worker.deliver(task_id, 4) is Ignore
    assert ran == [4]
    assert len(worker.dead_letters()) == 1
    (outcome,) = worker.outcomes()
    assert outcome.duplicate and outcome.status == FAILURE


def test_a_request_near_the_size_limit_still_leaves_a_dead_letter(worker: Worker) -> None:
    """1 MiB of arguments: the rebuilt request cannot fit what the producer may send
    (message.max.bytes 1,000,000), so the dead letter sheds its value, saying so."""
    payload = "x" * (1 << 20)
    assert worker.deliver(str(uuid.uuid4()), payload) is ValueError
    (letter,) = worker.dead_letters()
    headers = parse_dlq_headers(header_list(letter))
    assert letter.value() is None
    assert int(headers["value_dropped_bytes"]) > 1 << 20
    assert headers["error.class"] == "ValueError"
    assert len(worker.outcomes()) == 1


def test_an_exception_message_of_5_mb(worker: Worker) -> None:
    assert worker.deliver(str(uuid.uuid4()), 5, 5 << 20) is ValueError
    (letter,) = worker.dead_letters()
    headers = parse_dlq_headers(header_list(letter))
    assert len(headers["error.message"]) < MAX_TEXT_CHARS + 100
    assert letter.value() is not None, "the request itself still fits"
    (raw,) = worker.topic(worker.settings.results_topic)
    assert len(raw.value()) <= MAX_OUTCOME_BYTES
    assert Outcome.decode(raw.value()).error_message.startswith("mmm")  # type: ignore[union-attr]


def test_a_copy_that_wrote_the_owed_dead_letter_clears_the_debt(worker: Worker) -> None:
    """After a copy of the id wrote the dead letter a failed attempt owed, later copies
    only re-announce: one dead letter, not one per copy."""
    task_id = str(uuid.uuid4())
    worker.producer.before_produce = die_on(worker.settings.dlq_topic)
    assert worker.deliver(task_id, 6) is Killed
    worker.producer.before_produce = lambda topic: None
    assert worker.deliver(task_id, 6) is Ignore
    assert worker.deliver(task_id, 6) is Ignore
    assert ran == [6]
    assert len(worker.dead_letters()) == 1 and len(worker.outcomes()) == 2


def test_an_expired_copy_still_writes_the_owed_dead_letter(worker: Worker) -> None:
    """The failed attempt died before its dead letter; the next copy has expired, so it
    never reaches the task (Celery's task_revoked): it must write the dead letter before
    it announces the failure."""
    task_id = str(uuid.uuid4())
    worker.producer.before_produce = die_on(worker.settings.dlq_topic)
    assert worker.deliver(task_id, 7) is Killed
    worker.producer.before_produce = lambda topic: None
    request = SimpleNamespace(id=task_id, args=[7], kwargs={}, delivery_info={"routing_key": "q"})
    never_ran(
        worker.state,
        worker.origin(),
        task_id,
        "wdl.fail",
        "TaskExpired",
        "the task expired before a worker could run it",
        request=request,
    )
    assert ran == [7]
    (letter,) = worker.dead_letters()
    assert letter.value() is not None and b'"args":[7]' in letter.value()
    (outcome,) = worker.outcomes()
    assert outcome.status == FAILURE and worker.settled_after_dead_letter()
