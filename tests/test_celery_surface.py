"""What a Celery user expects of tasks fed from Kafka, on a real worker.

Envelope headers reach ``task.request`` as message headers; ``install()`` changes only
kafcel's own messages (acks_late, requeue on worker loss), never the app's other tasks;
revoke and ``self.replace()`` have a defined outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from kafcel import Outcome, Producer
from kafcel.protocol.deadletter import parse_dlq_headers

from .conftest import Pipeline, wait_until
from .test_pipeline import counts, outcomes_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Ledger = tuple[str, "redis.Redis[bytes]"]
QUEUE = "kafcel-tests"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture()
def client_app(pipeline: Pipeline) -> Iterator[Celery]:
    """A plain Celery client of the tests' broker: what a web app calling delay() uses."""
    url = pipeline.settings.redis_url
    app = Celery("client", broker=url, backend=url)
    app.conf.task_default_queue = QUEUE
    yield app
    app.close()


def dlq_depth(pipeline: Pipeline) -> int:
    return sum(pipeline.ends(pipeline.settings.dlq_topic).values())


@pytest.mark.both_paths
def test_envelope_headers_reach_the_task_request_and_cannot_forge_celerys(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, _ = ledger
    pipeline.start()
    headers = {"traceparent": TRACEPARENT, "tenant": "acme", "id": "evil", "retries": 7}
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit("tests.app.echo_request", args=[name], key="k", headers=headers)
    outcome = outcomes_for(pipeline, 1)[task_id]
    assert outcome.status == "SUCCESS", outcome
    seen = outcome.result
    assert seen["traceparent"] == TRACEPARENT and seen["tenant"] == "acme"
    assert seen["id"] == task_id and seen["retries"] == 0 and seen["kafcel"]
    # The outcome and origin_of(request).headers keep every header, the dropped ones too.
    assert outcome.headers == headers and seen["origin_headers"] == headers


def test_acks_late_is_per_message_a_plain_delay_keeps_the_apps_acks_early(
    pipeline: Pipeline, ledger: Ledger, client_app: Celery
) -> None:
    name, client = ledger
    pipeline.start_bridge()
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.ack_probe", args=[name, "kafka"], key="k")
    client_app.send_task("tests.app.ack_probe", args=[name, "plain"])
    seen = wait_until(
        lambda: len(got := client.hgetall(f"{name}:acked")) == 2 and got, 60, "both probes"
    )
    # acked while running: acks early (the app's default); still unacked: acks late.
    assert seen == {b"kafka": b"late", b"plain": b"early"}
    wait_until(pipeline.fully_committed, 30, "offsets committed")


@pytest.mark.both_paths
def test_an_operators_revoke_settles_without_a_dead_letter(
    pipeline: Pipeline, ledger: Ledger, client_app: Celery
) -> None:
    name, client = ledger
    pipeline.start()
    task_id = f"{name}-revoked"
    # Revoked before it arrives: the worker discards it on receipt.
    assert client_app.control.revoke(task_id, reply=True, timeout=10)
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.record", args=[name, "never"], key="k", id=task_id)
        after = producer.submit("tests.app.record", args=[name, "after"], key="k")
    outcomes = outcomes_for(pipeline, 2)
    assert outcomes[task_id].status == "REVOKED"
    assert outcomes[task_id].error_class == "TaskRevoked"
    assert outcomes[after].status == "SUCCESS"
    wait_until(pipeline.fully_committed, 30, "offsets committed")
    assert dlq_depth(pipeline) == 0
    assert not client.hexists(f"{name}:effects", "never")


@pytest.mark.both_paths
def test_revoke_terminate_settles_a_running_task_as_revoked(
    pipeline: Pipeline, ledger: Ledger, client_app: Celery
) -> None:
    name, client = ledger
    pipeline.start()
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit("tests.app.slow", args=[name, "long", 60.0], key="k")
    wait_until(lambda: client.hexists(f"{name}:started", "long"), 60, "the task to start")
    client_app.control.revoke(task_id, terminate=True)
    outcome = outcomes_for(pipeline, 1)[task_id]
    assert outcome.status == "REVOKED" and outcome.error_class == "TaskRevoked"
    wait_until(pipeline.fully_committed, 30, "offsets committed")
    assert dlq_depth(pipeline) == 0
    assert not client.hexists(f"{name}:effects", "long")


@pytest.mark.both_paths
def test_revoked_tasks_are_dead_lettered_when_configured(
    pipeline: Pipeline, ledger: Ledger, client_app: Celery
) -> None:
    name, _ = ledger
    pipeline.start(dlq_revoked=True)
    task_id = f"{name}-revoked"
    assert client_app.control.revoke(task_id, reply=True, timeout=10)
    with Producer(settings=pipeline.settings) as producer:
        producer.submit("tests.app.record", args=[name, "never"], key="k", id=task_id)
    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)
    assert dict(dlq[0].headers())["kafcel.error.class"] == b"TaskRevoked"
    wait_until(pipeline.fully_committed, 30, "offsets committed")


@pytest.mark.both_paths
def test_a_replaced_task_settles_on_its_replacements_outcome(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    pipeline.start()
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit("tests.app.replaced", args=[name, "swap"], key="k")
        failing = producer.submit("tests.app.replaced", args=[name, "fail"], key="j")
    outcomes = outcomes_for(pipeline, 2)
    done: Outcome = outcomes[task_id]
    # Celery keeps the task id across replace(): the record settles on the replacement.
    assert done.status == "SUCCESS" and done.task == "tests.app.record"
    assert done.result == "swap" and not done.duplicate
    assert client.hget(f"{name}:effects", "swap") == b"1"
    assert outcomes[failing].status == "FAILURE"
    assert outcomes[failing].task == "tests.app.always_fail"
    wait_until(pipeline.fully_committed, 30, "offsets committed")
    assert uuid.UUID(task_id)


@pytest.mark.both_paths
def test_a_hard_time_limit_fails_the_task_into_the_dlq_at_once(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    """The pool kills the process: the worker's main process announces the failure,
    without waiting for the redispatch check (redispatch_after_s, 2 minutes here)."""
    name, client = ledger
    pipeline.start()
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit("tests.app.hard_limited", args=[name, "hard"], key="k")
        after = producer.submit("tests.app.record", args=[name, "after"], key="k")
    outcomes = outcomes_for(pipeline, 2)
    failed = outcomes[task_id]
    assert failed.status == "FAILURE" and failed.error_class == "TimeLimitExceeded"
    assert outcomes[after].status == "SUCCESS"
    dlq = pipeline.read(pipeline.settings.dlq_topic, until=lambda got: len(got) >= 1)
    h = parse_dlq_headers(dlq[0].headers())
    assert h["error.class"] == "TimeLimitExceeded" and h["task_id"] == task_id
    assert h["stage"] == "worker"
    assert counts(client, f"{name}:attempts")["hard"] == 1
    wait_until(pipeline.fully_committed, 30, "offsets committed")
