"""RabbitMQ as Celery's broker: the bridge's publish on a real rabbitmq-server.

A message counts as dispatched only once RabbitMQ has confirmed it (publisher confirms)
and routed it to a queue (``mandatory``); what it refuses, or drops for want of a queue,
stays with the bridge and is sent again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import amqp
import pytest
from celery import Celery
from kombu import Exchange, Queue

from kafcel.bridge.publish import Publisher
from kafcel.dev import DevStack
from kafcel.errors import DispatchHeld
from kafcel.protocol.envelope import Envelope

from .test_publish import _item

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]


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
    answers = Publisher(app=app).publish(items)
    assert answers[0] is None
    assert all(isinstance(a, DispatchHeld) for a in answers[1:]), answers
    assert "did not confirm" in str(answers[1])
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
