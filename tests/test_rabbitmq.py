"""RabbitMQ as Celery's broker: the bridge's publish on a real rabbitmq-server.

A message counts as dispatched only once RabbitMQ has confirmed it (publisher confirms)
and routed it to a queue (``mandatory``); what it refuses, or drops for want of a queue,
stays with the bridge and is sent again.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator

import amqp
import pytest
from celery import Celery
from kombu import Exchange, Queue

from kafcel import Producer
from kafcel.bridge.publish import Publisher
from kafcel.dev import DevStack
from kafcel.errors import DispatchHeld
from kafcel.protocol.envelope import Envelope

from .conftest import Pipeline, wait_until
from .test_pipeline import Ledger, counts, outcomes_for
from .test_publish import _item

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture()
def app(rabbitmq: DevStack) -> Iterator[Celery]:
    app = Celery("rabbit-publish-test", broker=rabbitmq.rabbitmq_url)
    app.conf.task_default_queue = f"pub-{uuid.uuid4().hex[:8]}"
    yield app
    app.close()


@pytest.fixture()
def admin(rabbitmq: DevStack) -> Iterator[amqp.Channel]:
    """A channel of the test's own, to look at and change the broker's queues."""
    conn = amqp.Connection(
        host=f"{rabbitmq.host}:{rabbitmq.rabbitmq_port}", userid="guest", password="guest"
    )
    conn.connect()
    try:
        yield conn.channel()
    finally:
        conn.close()


def _depth(admin: amqp.Channel, queue: str) -> int:
    return int(admin.queue_declare(queue, passive=True).message_count)


def test_messages_rabbitmq_does_not_confirm_are_held_not_dispatched(
    app: Celery, admin: amqp.Channel
) -> None:
    """A queue at its length limit with `reject-publish` nacks what comes beyond it."""
    name = app.conf.task_default_queue
    app.conf.task_queues = [
        Queue(name, queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ]
    items = [_item(Envelope(task="shop.order")) for _ in range(3)]
    started = time.monotonic()
    answers = Publisher(app=app, confirm_timeout_s=5).publish(items)
    assert answers[0] is None
    assert all(isinstance(a, DispatchHeld) for a in answers[1:]), answers
    assert "(nack)" in str(answers[1])  # RabbitMQ's answer, not the time-out
    assert time.monotonic() - started < 4
    assert _depth(admin, name) == 1
    admin.queue_delete(name)


def test_a_message_no_queue_takes_is_held_and_the_queue_declared_again(
    app: Celery, admin: amqp.Channel
) -> None:
    """The queue went away behind the bridge's back (an operator, a non-durable queue on a
    node that restarted): RabbitMQ returns what it cannot route, and the next batch
    declares the queue again, as Celery would on a fresh connection."""
    name = app.conf.task_default_queue
    publisher = Publisher(app=app)
    assert publisher.publish([_item(Envelope(task="shop.order"))]) == [None]
    admin.queue_delete(name)
    (answer,) = publisher.publish([_item(Envelope(task="shop.order"))])
    assert isinstance(answer, DispatchHeld) and "returned" in str(answer), answer
    assert publisher.publish([_item(Envelope(task="shop.order"))]) == [None]
    assert _depth(admin, name) == 1
    admin.queue_delete(name)


def test_the_batch_declares_what_celery_declares(app: Celery, admin: amqp.Channel) -> None:
    """A topic exchange and a binding from task_queues: the bridge's first publish makes
    them as send_task would, so a worker started later finds its messages."""
    name = app.conf.task_default_queue
    exchange = f"ex-{name}"
    app.conf.task_queues = [Queue(name, Exchange(exchange, type="topic"), routing_key=f"{name}.#")]
    app.conf.task_default_exchange = exchange
    app.conf.task_default_exchange_type = "topic"
    app.conf.task_default_routing_key = f"{name}.orders"
    items = [_item(Envelope(task="shop.order")) for _ in range(4)]
    assert Publisher(app=app).publish(items) == [None] * 4
    admin.exchange_declare(exchange, "topic", passive=True)
    assert _depth(admin, name) == 4
    admin.queue_delete(name)
    admin.exchange_delete(exchange)


# The pipeline on RabbitMQ: Apache Kafka and Redis from the session stack, RabbitMQ as
# Celery's broker for the test's bridge and workers.


@pytest.fixture()
def rabbit(pipeline: Pipeline, rabbitmq: DevStack) -> Pipeline:
    """The pipeline with RabbitMQ as Celery's broker (its fixture stops what started)."""
    pipeline.celery_broker_url = rabbitmq.rabbitmq_url
    return pipeline


@pytest.mark.both_paths
@pytest.mark.timeout(240)
def test_every_task_runs_once_in_key_order_across_retries(
    rabbit: Pipeline, ledger: Ledger, path: str
) -> None:
    """Path A: the bridge publishes to RabbitMQ, plain workers run the tasks. Path B: the
    workers consume Kafka; their retries (one task in ten) go through RabbitMQ."""
    name, client = ledger
    if path == "bridge":
        rabbit.start_worker()
    rabbit.start(ordering="key")
    keys, per_key = 20, 10
    with Producer(settings=rabbit.settings) as producer:
        for seq in range(per_key):
            for k in range(keys):
                fail = (k + seq) % 10 == 0
                producer.submit(
                    "tests.app.sequenced", args=[name, f"k{k}", seq, 0.0, fail], key=f"k{k}"
                )
    wait_until(lambda: client.hlen(f"{name}:effects") == keys * per_key, 180, "all effects")
    for k in range(keys):
        assert [int(x) for x in client.lrange(f"{name}:seq:k{k}", 0, -1)] == list(range(per_key))
        client.delete(f"{name}:seq:k{k}")
    assert set(counts(client, f"{name}:effects").values()) == {1}
    wait_until(rabbit.fully_committed, 60, "offsets committed")


@pytest.mark.timeout(240)
def test_a_restart_that_loses_a_transient_queues_messages_is_covered_by_redispatch(
    rabbit: Pipeline, rabbitmq: DevStack, ledger: Ledger
) -> None:
    """A non-durable queue does not survive its node's restart, nor do the messages in it,
    though RabbitMQ had confirmed them; the bridge's queued marks in Redis still vouch for
    them. The bridge notices the restart and checks its tasks again, at once."""
    name, client = ledger
    rabbit.queue_options = {"durable": False}
    rabbit.start_bridge(redispatch_after_s=2.0)
    with Producer(settings=rabbit.settings) as producer:
        ids = [producer.submit("tests.app.record", args=[name, i], key=f"k{i}") for i in range(5)]
    wait_until(lambda: _queue_depth(rabbitmq, rabbit.queue) == 5, 60, "5 messages in the queue")
    rabbitmq.kill("rabbitmq", signal.SIGKILL)
    rabbitmq.start("rabbitmq")
    assert _queue_depth(rabbitmq, rabbit.queue) is None  # gone, with its messages
    rabbit.start_worker()
    outcomes = outcomes_for(rabbit, 5)
    assert {outcomes[i].status for i in ids} == {"SUCCESS"}
    assert counts(client, f"{name}:effects") == {str(i): 1 for i in range(5)}
    wait_until(rabbit.fully_committed, 60, "offsets committed")


@pytest.mark.timeout(240)
def test_a_quorum_queue_with_a_delivery_limit_runs_tasks_and_bounds_a_killer(
    rabbit: Pipeline, ledger: Ledger
) -> None:
    """Quorum queues (no global QoS; Celery's worker detects them) with a delivery limit:
    RabbitMQ drops a message delivered too often, kafcel's max_attempts still decides."""
    name, client = ledger
    rabbit.queue_options = {"x-queue-type": "quorum", "x-delivery-limit": 2}
    rabbit.start_worker()
    rabbit.start_bridge(redispatch_after_s=2.0)
    with Producer(settings=rabbit.settings) as producer:
        doomed = producer.submit("tests.app.suicide", args=[name, "boom"], key="same")
        after = producer.submit("tests.app.record", args=[name, "after"], key="same")
        others = [
            producer.submit("tests.app.record", args=[name, i], key=f"k{i}") for i in range(8)
        ]
    outcomes = outcomes_for(rabbit, 10)
    assert outcomes[doomed].status == "FAILURE" and outcomes[doomed].error_class == "TaskLost"
    assert counts(client, f"{name}:attempts")["boom"] == 3
    assert outcomes[after].status == "SUCCESS"
    assert {outcomes[i].status for i in others} == {"SUCCESS"}
    wait_until(rabbit.fully_committed, 60, "offsets committed")


def _queue_depth(rabbitmq: DevStack, queue: str) -> int | None:
    """Messages ready in ``queue``; None when the queue does not exist."""
    conn = amqp.Connection(
        host=f"{rabbitmq.host}:{rabbitmq.rabbitmq_port}", userid="guest", password="guest"
    )
    conn.connect()
    try:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)
    except amqp.exceptions.NotFound:
        return None
    finally:
        conn.close()


def test_a_channel_error_mid_batch_holds_its_record_and_the_rest_still_confirm(
    app: Celery, admin: amqp.Channel
) -> None:
    """A queue that exists with other arguments than Celery declares (PRECONDITION_FAILED)
    closes the channel; py-amqp reopens it outside confirm mode, so the rest of the batch
    must go on a new confirming channel, not wait out the confirm time-out."""
    clash = f"clash-{uuid.uuid4().hex[:8]}"
    admin.queue_declare(clash, durable=False, auto_delete=False)  # Celery declares durable
    items = [
        _item(Envelope(task="shop.order", queue=clash)),
        _item(Envelope(task="shop.order")),
        _item(Envelope(task="shop.order")),
    ]
    publisher = Publisher(app=app, confirm_timeout_s=5)
    started = time.monotonic()
    answers = publisher.publish(items)
    assert isinstance(answers[0], DispatchHeld), answers
    assert answers[1:] == [None, None], answers
    assert time.monotonic() - started < 4
    assert publisher.publish([_item(Envelope(task="shop.order"))]) == [None]
    assert _depth(admin, app.conf.task_default_queue) == 3
    admin.queue_delete(clash)
    admin.queue_delete(app.conf.task_default_queue)
