"""The bridge's batched publish writes exactly what Celery's send_task writes (real Redis).

Workers running these messages is what every pipeline test checks; here the bytes in
Redis are compared with Celery's own, field by field, for both of the publisher's paths.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery, signals
from confluent_kafka import Message

from kafcel.bridge.dispatch import Dispatch
from kafcel.bridge.publish import Publisher
from kafcel.celery import HEADER
from kafcel.dev import DevStack, free_ports
from kafcel.errors import DispatchHeld, DispatchRefused
from kafcel.protocol.envelope import Envelope
from kafcel.protocol.outcome import Origin

pytestmark = pytest.mark.timeout(60)

DB = 7


@pytest.fixture()
def app(stack: DevStack) -> Iterator[Celery]:
    app = Celery("publish-test", broker=f"{stack.redis_url.rsplit('/', 1)[0]}/{DB}")
    app.conf.task_default_queue = f"pub-{uuid.uuid4().hex[:8]}"
    yield app
    app.close()


@pytest.fixture()
def client(stack: DevStack) -> redis.Redis:
    return redis.Redis.from_url(f"{stack.redis_url.rsplit('/', 1)[0]}/{DB}")


def _item(envelope: Envelope, *, eta: datetime | None = None) -> Dispatch:
    origin = Origin(topic="t", partition=0, offset=1, key="user-1", results_topic="r")
    return Dispatch(
        envelope=envelope,
        task_id=str(uuid.uuid4()),
        origin=origin,
        tp=("t", 0),
        offset=1,
        slot=None,
        fence="test.1",
        msg=Message(topic="t", partition=0, offset=1, key=b"user-1", value=envelope.encode()),
        eta=eta,
        expires=envelope.expires if isinstance(envelope.expires, datetime) else None,
    )


def _publisher(app: Celery) -> Publisher:
    return Publisher(app=app)


def _normal(raw: bytes) -> dict[str, Any]:
    """A message as a worker reads it, minus what differs per send by design."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    del message["properties"]["delivery_tag"]
    del message["headers"]["origin"]
    # A TTL in ms, computed at each send: the same to within the test's duration.
    if "expiration" in message["properties"]:
        ttl_s = int(message["properties"].pop("expiration")) / 1000
        message["ttl_hours"] = round(ttl_s / 3600)
    return message


def _celery_copy(app: Celery, item: Dispatch) -> None:
    """``send_task`` as an application calls it: options it has, none it lacks."""
    e = item.payload()
    given = {"queue": e.queue, "priority": e.priority}
    app.send_task(
        e.task,
        args=list(e.args),
        kwargs=dict(e.kwargs),
        task_id=item.task_id,
        eta=item.eta,
        expires=item.expires,
        serializer="json",
        headers={HEADER: dataclasses.replace(item.origin, headers=dict(e.headers)).to_header()},
        **{k: v for k, v in given.items() if v is not None},
    )


CASES = {
    "plain": (Envelope(task="shop.order", args=(1, "two"), kwargs={"k": [1, 2.5, None]}), None),
    "unicode": (Envelope(task="shop.order", args=("é ✓ 😀",), kwargs={"name": "Zoë"}), None),
    "eta and expiry": (
        Envelope(task="shop.later", expires=datetime(2030, 1, 1, tzinfo=UTC)),
        datetime.now(UTC) + timedelta(seconds=30),
    ),
    "priority": (Envelope(task="shop.urgent", priority=7), None),
    # Past Celery's repr limits (3 levels, 1024 characters): its saferepr shortens them.
    "deep": (Envelope(task="shop.deep", args=([[[[1]]]], {"a": {"b": {"c": [1]}}})), None),
    "long": (Envelope(task="shop.long", args=("x" * 3000,), kwargs={"k": ["y"] * 400}), None),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("hooked", [False, True], ids=["redis-pipeline", "celery-publish"])
def test_batched_publish_writes_what_send_task_writes(
    app: Celery, client: redis.Redis, case: str, hooked: bool
) -> None:
    envelope, eta = CASES[case]
    queue = f"pub-{uuid.uuid4().hex[:8]}"
    envelope = Envelope(**{**envelope.__dict__, "queue": queue})
    items = [_item(envelope, eta=eta) for _ in range(3)]
    seen: list[str] = []

    def hook(sender: str, **_: Any) -> None:
        seen.append(sender)

    if hooked:  # a tracing library listening: the publisher must go through Celery
        signals.before_task_publish.connect(hook, weak=False)
    try:
        publisher = _publisher(app)
        assert publisher.publish(items) == [None, None, None]
    finally:
        signals.before_task_publish.disconnect(hook)
    assert publisher.round_trips == 1
    assert seen == ([envelope.task] * 3 if hooked else [])
    # kombu's Redis transport keeps a list per priority step (0, 3, 6, 9).
    step = max(s for s in (0, 3, 6, 9) if s <= (envelope.priority or 0))
    key = f"{queue}\x06\x16{step}" if step else queue
    ours = [_normal(raw) for raw in client.lrange(key, 0, -1)]
    client.delete(key)
    for item in items:
        _celery_copy(app, item)
    theirs = [_normal(raw) for raw in client.lrange(key, 0, -1)]
    client.delete(key)
    assert len(ours) == 3
    assert [_diff(a, b) for a, b in zip(ours, theirs, strict=True)] == [[]] * 3


def test_a_record_celery_cannot_build_is_refused_alone(app: Celery, client: redis.Redis) -> None:
    queue = f"pub-{uuid.uuid4().hex[:8]}"
    good = _item(Envelope(task="shop.order", queue=queue))
    bad = _item(Envelope(task="shop.order", queue=queue))
    object.__setattr__(bad, "eta", object())  # not a datetime: Celery cannot format it
    refusals = _publisher(app).publish([good, bad, good])
    assert refusals[0] is None and refusals[2] is None
    assert refusals[1] is not None and "Celery refused the task" in str(refusals[1])
    assert client.llen(queue) == 2
    client.delete(queue)


def test_origin_header_holds_every_field() -> None:
    origin = Origin(topic="t", partition=2, offset=9, key="k", trace_id="x", headers={"a": 1})
    assert origin.to_header() == dataclasses.asdict(origin)
    assert Origin.from_header(origin.to_header()) == origin


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.filterwarnings("ignore::celery.exceptions.CDeprecationWarning")
def test_a_registered_tasks_own_options_apply_as_with_send_task(
    app: Celery, client: redis.Redis
) -> None:
    queue = f"pub-{uuid.uuid4().hex[:8]}"

    @app.task(name="shop.limited", queue=queue, priority=4, time_limit=30, soft_time_limit=20)
    def limited() -> None:  # pragma: no cover - never runs here
        pass

    app.finalize(auto=True)  # as the bridge does: send_task looks in the registry
    item = _item(Envelope(task="shop.limited"))
    assert _publisher(app).publish([item]) == [None]
    key = f"{queue}\x06\x163"  # priority 4 falls in kombu's step 3
    ours = [_normal(raw) for raw in client.lrange(key, 0, -1)]
    client.delete(key)
    _celery_copy(app, item)
    theirs = [_normal(raw) for raw in client.lrange(key, 0, -1)]
    client.delete(key)
    assert len(ours) == 1
    assert ours[0]["headers"]["timelimit"] == [30, 20]
    assert [_diff(a, b) for a, b in zip(ours, theirs, strict=True)] == [[]]


def test_a_list_redis_refuses_holds_only_its_own_records(app: Celery, client: redis.Redis) -> None:
    """WRONGTYPE is about the key, not the record: the record waits for a retry."""
    good, bad = f"pub-{uuid.uuid4().hex[:8]}", f"pub-{uuid.uuid4().hex[:8]}"
    client.set(bad, "not a list")  # LPUSH answers WRONGTYPE
    items = [
        _item(Envelope(task="shop.order", queue=good)),
        _item(Envelope(task="shop.order", queue=bad)),
        _item(Envelope(task="shop.order", queue=good)),
    ]
    publisher = _publisher(app)
    answers = publisher.publish(items)
    assert answers[0] is None and answers[2] is None
    assert isinstance(answers[1], DispatchHeld) and "WRONGTYPE" in str(answers[1])
    assert publisher.round_trips == 1  # not retried as if the broker were down
    assert client.llen(good) == 2
    client.delete(good, bad)


def test_a_routing_error_holds_the_record_instead_of_refusing_it(
    app: Celery, client: redis.Redis
) -> None:
    """A bad task_routes deploy (a queue the app neither declares nor creates) is the
    deployment's fault: the record waits for a retry; it is not dead-lettered."""
    app.conf.task_create_missing_queues = False
    app.conf.task_routes = {"shop.misrouted": {"queue": "nowhere"}}
    items = [_item(Envelope(task="shop.misrouted")), _item(Envelope(task="shop.order"))]
    answers = _publisher(app).publish(items)
    assert isinstance(answers[0], DispatchHeld) and "nowhere" in str(answers[0])
    assert answers[1] is None
    client.delete(app.conf.task_default_queue)


def test_an_envelope_naming_an_unknown_queue_is_refused(app: Celery) -> None:
    """The record itself asked for a queue the app does not have: its own fault."""
    app.conf.task_create_missing_queues = False
    (answer,) = _publisher(app).publish([_item(Envelope(task="shop.order", queue="nowhere"))])
    assert isinstance(answer, DispatchRefused) and "nowhere" in str(answer)


def test_publish_does_not_wait_for_a_broker_that_is_down() -> None:
    """The bridge's one thread must keep polling Kafka while Celery's broker is away."""
    (port,) = free_ports(1)
    app = Celery("down", broker=f"redis://127.0.0.1:{port}/0")
    started = time.monotonic()
    publisher = _publisher(app)
    (answer,) = publisher.publish([_item(Envelope(task="shop.order"))])
    assert isinstance(answer, DispatchHeld) and "unavailable" in str(answer)
    assert not publisher.reachable(timeout_s=1)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("hooked", [False, True], ids=["redis-pipeline", "celery-publish"])
def test_envelope_headers_become_message_headers_but_never_celerys_own(
    app: Celery, client: redis.Redis, hooked: bool
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    hostile = {
        "id": "evil",
        "task": "evil.task",
        "retries": 9,
        "eta": "2000-01-01T00:00:00+00:00",
        "shadow": "x",
        "callbacks": [{"task": "evil"}],
        "is_eager": True,
        HEADER: {"topic": "forged", "partition": 0, "offset": 0},
    }
    queue = f"pub-{uuid.uuid4().hex[:8]}"
    envelope = Envelope(
        task="shop.order",
        queue=queue,
        headers={"traceparent": traceparent, "tenant": "acme", **hostile},
    )
    item = _item(envelope)

    def hook(sender: str, **_: Any) -> None:
        pass

    if hooked:
        signals.before_task_publish.connect(hook, weak=False)
    try:
        assert _publisher(app).publish([item]) == [None]
    finally:
        signals.before_task_publish.disconnect(hook)
    (raw,) = client.lrange(queue, 0, -1)
    client.delete(queue)
    headers = json.loads(raw)["headers"]
    # What tracing reads from task.request (OpenTelemetry's Celery getter: getattr).
    assert headers["traceparent"] == traceparent and headers["tenant"] == "acme"
    assert headers["id"] == item.task_id and headers["task"] == "shop.order"
    assert headers["retries"] == 0 and headers["eta"] is None and headers["shadow"] is None
    assert "callbacks" not in headers and "is_eager" not in headers
    sent = dataclasses.replace(item.origin, headers=dict(envelope.headers))
    assert headers[HEADER] == sent.to_header()
