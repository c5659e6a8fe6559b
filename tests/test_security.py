"""A production cluster's security, on the real servers: Redis with TLS only and an ACL
user (the once-guard, Celery's broker and result backend, bridge presence, status).
Secrets never show in logs or status output."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from kafcel import Producer
from kafcel.dev import DevStack, free_ports

from .conftest import ROOT, Pipeline, running, wait_until
from .test_cli import kafcel as _kafcel
from .test_pipeline import counts, outcomes_for

pytestmark = [pytest.mark.security, pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="session")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Redis listening on TLS only, its default user off, user ``kafcel`` with a password."""
    s = DevStack(
        services=("redis",),
        redis_port=free_ports(1)[0],
        state_dir=tmp_path_factory.mktemp("secure-redis"),
        redis_tls=True,
    )
    with running(s):
        yield s


@pytest.fixture()
def secure(pipeline: Pipeline, secure_redis: DevStack) -> Pipeline:
    """The test's bridge and workers with every Redis use on the TLS Redis: once-guard
    (KAFCEL_REDIS_URL), and Celery's broker and result backend (the tests' app reads the
    same URL; CELERY_BROKER_URL names it too, with a queue of the test's own)."""
    pipeline.settings = pipeline.settings.replace(redis_url=secure_redis.redis_url)
    pipeline.celery_broker_url = secure_redis.redis_url
    return pipeline


@pytest.mark.both_paths
def test_the_pipeline_runs_on_a_tls_redis_with_an_acl_user(
    secure: Pipeline, secure_redis: DevStack, path: str
) -> None:
    url = secure_redis.redis_url
    password = urlsplit(url).password
    assert urlsplit(url).scheme == "rediss" and password
    # The plain port is closed and the default user is off: only TLS with the user works.
    with pytest.raises(redis.RedisError):
        redis.Redis(host="127.0.0.1", port=secure_redis.redis_port, socket_timeout=3).ping()
    client = redis.Redis.from_url(url)
    name = f"kafcel:test:{uuid.uuid4().hex[:10]}"
    if path == "bridge":
        secure.start_worker()
    secure.start()
    with Producer(settings=secure.settings) as producer:
        ids = [
            producer.submit("tests.app.record", args=[name, i], key=f"k{i % 4}") for i in range(20)
        ]
        retried = producer.submit("tests.app.flaky_bind", args=[name, "retry", 1], key="r")
    outcomes = outcomes_for(secure, 21)
    assert {outcomes[i].status for i in [*ids, retried]} == {"SUCCESS"}
    assert outcomes[retried].retries == 1
    assert set(counts(client, f"{name}:effects").values()) == {1}
    assert len(counts(client, f"{name}:effects")) == 21
    wait_until(secure.fully_committed, 60, "offsets committed")

    env = secure.env()
    report = wait_until(
        lambda: (r := _status(env)) and r["lag"] == 0 and r.get("bridges") and r,
        60,
        "status to see the consumers and lag 0",
    )
    out = json.dumps(report)
    assert report["tasks"]["states"].get("SUCCESS", 0) >= 21, report["tasks"]
    assert password not in out
    for proc in [*secure.bridges, *secure.workers]:
        assert password not in proc.log_path.read_text(), proc.name
    client.delete(*client.keys(f"{name}:*"))


def _status(env: dict[str, str]) -> dict[str, object] | None:
    done = _kafcel("status", "--json", env=env)
    if done.returncode != 0:
        return None
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_a_wrong_redis_password_is_one_line_without_the_password(
    secure_redis: DevStack, pipeline: Pipeline
) -> None:
    url = secure_redis.redis_url
    password = urlsplit(url).password or ""
    wrong = url.replace(f":{password}@", ":not-the-password@")
    env = {**pipeline.env(), "KAFCEL_REDIS_URL": wrong}
    done = _kafcel("status", env=env)
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Redis" in done.stderr and "not-the-password" not in done.stderr
    assert "Traceback" not in done.stderr


# -- Kafka: a SASL_SSL listener with SCRAM users and ACLs ------------------------------


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Apache Kafka with a second listener, SASL_SSL: SCRAM-SHA-512 users bridge,
    producer, worker and operator, certificates of its own CA, the standard authorizer
    (the plaintext listener is the stack's own, a super user)."""
    kafka_port, controller_port, secure_port = free_ports(3)
    s = DevStack(
        services=("kafka",),
        kafka_ports=[kafka_port, controller_port],
        kafka_secure_port=secure_port,
        state_dir=tmp_path_factory.mktemp("secure-kafka"),
        cache_dir=ROOT / ".kafcel" / "kafka",
    )
    with running(s):
        yield s


def _grant(stack: DevStack, user: str, grants: list[tuple[str, str, str, str]]) -> None:
    """ACLs for ``User:user``: (resource type, name, pattern type, operation)."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    bindings = [
        AclBinding(
            ResourceType[kind],
            name,
            ResourcePatternType[pattern],
            f"User:{user}",
            "*",
            AclOperation[operation],
            AclPermissionType.ALLOW,
        )
        for kind, name, pattern, operation in grants
    ]
    for future in admin.create_acls(bindings).values():
        future.result()


def _on_topics(ops: dict[str, tuple[str, ...]]) -> list[tuple[str, str, str, str]]:
    """Grants of ``operations`` on each topic named."""
    return [("TOPIC", name, "LITERAL", op) for name, names in ops.items() for op in names]


def _as_user(stack: DevStack, user: str, **changes: str) -> dict[str, str]:
    """KAFCEL_* of a client that reaches the SASL_SSL listener as ``user``."""
    sec = stack.kafka.security
    assert sec is not None
    settings = {
        "KAFCEL_BOOTSTRAP_SERVERS": stack.kafka_secure_bootstrap,
        "KAFCEL_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFCEL_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFCEL_SASL_USERNAME": user,
        "KAFCEL_SASL_PASSWORD": sec.users[user],
        "KAFCEL_SSL_CA_LOCATION": str(sec.ca),
    }
    return {**settings, **changes}


@pytest.fixture()
def secured(
    pipeline: Pipeline, secure_kafka: DevStack
) -> tuple[Pipeline, dict[str, dict[str, str]]]:
    """The test's topics on the secure Kafka, and each principal given exactly what its
    role needs: the bridge its topics and group, the producer write on the task topic,
    the worker write on the results and DLQ topics."""
    s = pipeline.settings
    topics = {s.topic: 4, s.results_topic: 4, s.dlq_topic: 4, s.scheduled_topic: 4}
    secure_kafka.ensure_topics(topics)
    rw, w = ("READ", "WRITE", "DESCRIBE"), ("WRITE", "DESCRIBE")
    r = ("READ", "DESCRIBE")
    # The bridge's group, and the outcome and schedule readers' groups named after it.
    group = [("GROUP", s.group_id, "PREFIXED", op) for op in r]
    bridge = {s.topic: r, s.results_topic: r, s.dlq_topic: w, s.scheduled_topic: rw}
    _grant(secure_kafka, "bridge", _on_topics(bridge) + group)
    _grant(secure_kafka, "producer", _on_topics({s.topic: w}))
    _grant(secure_kafka, "worker", _on_topics({s.results_topic: w, s.dlq_topic: w}))
    # The pipeline's helpers (committed offsets, reading topics) use the plain listener.
    pipeline.settings = s.replace(bootstrap_servers=secure_kafka.bootstrap_servers)
    users = {u: _as_user(secure_kafka, u) for u in ("bridge", "producer", "worker")}
    return pipeline, users


def test_bridge_worker_producer_and_status_reach_kafka_through_sasl_ssl_with_acls(
    secured: tuple[Pipeline, dict[str, dict[str, str]]], secure_kafka: DevStack
) -> None:
    pipeline, users = secured
    env = pipeline.env()
    name = f"kafcel:test:{uuid.uuid4().hex[:10]}"
    pipeline.celery_broker_url = pipeline.settings.redis_url  # a queue of its own
    worker = pipeline.start_worker(**_overrides(users["worker"]))
    (metrics_port,) = free_ports(1)
    bridge = pipeline.start_bridge(**_overrides(users["bridge"]), metrics_port=metrics_port)
    _submit_records(pipeline, users["producer"], name, 5)
    wait_until(pipeline.fully_committed, 90, "5 tasks settled through SASL_SSL")
    report = json.loads(_kafcel("status", "--json", env={**env, **users["bridge"]}).stdout)
    assert report["lag"] == 0 and report["bridges"], report
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    secrets = [u["KAFCEL_SASL_PASSWORD"] for u in users.values()]
    logs = [bridge.log_path.read_text(), worker.log_path.read_text()]
    for text in (json.dumps(report), metrics, *logs):
        assert not any(secret in text for secret in secrets)


def _submit_records(pipeline: Pipeline, producer: dict[str, str], name: str, n: int) -> None:
    """``n`` ``tests.app.record`` tasks by `kafcel submit` as the producer principal."""
    for i in range(n):
        argv = ("submit", "tests.app.record", name, str(i), "--key", f"k{i}")
        done = _kafcel(*argv, env={**pipeline.env(), **producer})
        assert done.returncode == 0, done.stderr


def _overrides(user_env: dict[str, str]) -> dict[str, str]:
    """KAFCEL_* variables as Settings overrides (Pipeline.start_* take those)."""
    return {k.removeprefix("KAFCEL_").lower(): v for k, v in user_env.items()}


@pytest.mark.parametrize(
    ("command", "change", "expected"),
    [
        ("submit", {"KAFCEL_SASL_PASSWORD": "not-the-password"}, "authentication"),
        ("status", {"KAFCEL_SASL_PASSWORD": "not-the-password"}, "authentication"),
        ("submit", {"KAFCEL_TOPIC": "not-granted"}, "authoriz"),
        # Kafka gives an idempotent producer no id unless it may write some topic.
        ("submit", {"KAFCEL_SASL_USERNAME": "operator"}, "authoriz"),
        # The producer may write the task topic, not read its group's offsets.
        ("status", {}, "authoriz"),
    ],
    ids=[
        "submit-wrong-password",
        "status-wrong-password",
        "submit-no-acl",
        "submit-no-acl-at-all",
        "status-no-acl",
    ],
)
def test_a_refused_client_is_one_line_naming_the_problem(
    secured: tuple[Pipeline, dict[str, dict[str, str]]],
    secure_kafka: DevStack,
    command: str,
    change: dict[str, str],
    expected: str,
) -> None:
    pipeline, users = secured
    env = {**pipeline.env(), **users["producer"], **change}
    if change.get("KAFCEL_SASL_USERNAME") == "operator":
        env["KAFCEL_SASL_PASSWORD"] = _as_user(secure_kafka, "operator")["KAFCEL_SASL_PASSWORD"]
    started = time.monotonic()
    args = ("submit", "tests.app.record", "x") if command == "submit" else ("status",)
    done = _kafcel(*args, env=env)
    assert done.returncode == 1, done.stdout
    assert time.monotonic() - started < 30
    assert done.stderr.count("\n") == 1 and expected in done.stderr.lower(), done.stderr
    assert users["producer"]["KAFCEL_SASL_PASSWORD"] not in done.stderr
    assert "not-the-password" not in done.stderr


def test_an_untrusted_certificate_is_one_line(
    secured: tuple[Pipeline, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    from kafcel.dev.certs import make_certs

    other = make_certs(tmp_path / "other-ca", hosts=("127.0.0.1",), ca_name="someone else")
    pipeline, users = secured
    env = {**pipeline.env(), **users["producer"], "KAFCEL_SSL_CA_LOCATION": str(other.ca)}
    done = _kafcel("submit", "tests.app.record", "x", env=env)
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1 and "certificate" in done.stderr.lower(), done.stderr


def test_operator_tools_reach_kafka_through_sasl_ssl(
    secured: tuple[Pipeline, dict[str, dict[str, str]]],
    secure_kafka: DevStack,
    logs_dir: Path,
) -> None:
    """`dlq list`, `dlq replay`, `replay` and the dashboard as an operator principal that
    may read the DLQ, read and write the task topic, and read the group's offsets."""
    pipeline, users = secured
    s = pipeline.settings
    tools = _on_topics({s.topic: ("READ", "WRITE", "DESCRIBE"), s.dlq_topic: ("READ", "DESCRIBE")})
    tools += [("GROUP", s.group_id, "LITERAL", "DESCRIBE")]
    # The tools' own throwaway consumer groups (they commit nothing).
    tools += [("GROUP", "kafcel-admin-", "PREFIXED", op) for op in ("READ", "DESCRIBE")]
    _grant(secure_kafka, "operator", tools)
    operator = _as_user(secure_kafka, "operator")
    env = {**pipeline.env(), **operator}
    # A poison record as the producer would write it: the bridge dead-letters it.
    pipeline.celery_broker_url = pipeline.settings.redis_url
    pipeline.start_bridge(**_overrides(users["bridge"]))
    raw = KafkaProducer({"bootstrap.servers": secure_kafka.bootstrap_servers})
    raw.produce(s.topic, b'{"v": 1, "task": "tests.app.nope"}', key=b"k")
    raw.flush(10)

    def dead_letters() -> list[dict[str, object]] | None:
        done = _kafcel("dlq", "list", "--json", env=env)
        if done.returncode != 0:
            return None
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()] or None

    listed = wait_until(dead_letters, 60, "the dead letter, listed through SASL_SSL")
    (letter,) = listed
    assert letter["error_class"] == "TaskNotAllowed", letter
    replayed = _kafcel(
        "dlq", "replay", f"{letter['partition']}:{letter['offset']}", "--json", env=env
    )
    assert replayed.returncode == 0, replayed.stderr
    dry = _kafcel("replay", "--from", "-1h", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    from .test_dashboard import start_dashboard

    dash, url = start_dashboard(env, logs_dir, f"{s.topic}-secure")
    try:
        with urllib.request.urlopen(url + "api/status", timeout=30) as resp:
            page = resp.read().decode()
        assert json.loads(page)["topic"] == s.topic
    finally:
        dash.stop(timeout_s=10)
    secrets = [
        operator["KAFCEL_SASL_PASSWORD"],
        *(u["KAFCEL_SASL_PASSWORD"] for u in users.values()),
    ]
    for text in (
        listed and json.dumps(listed),
        replayed.stdout,
        dry.stdout,
        page,
        dash.log_path.read_text(),
    ):
        assert not any(secret in text for secret in secrets)


def test_a_consuming_worker_reaches_kafka_through_sasl_ssl(
    secured: tuple[Pipeline, dict[str, dict[str, str]]], secure_kafka: DevStack
) -> None:
    """Path B: the worker principal is given the bridge's grants too (it reads the topic,
    its group, the outcomes and the schedule, besides writing outcomes and dead letters)."""
    pipeline, users = secured
    s = pipeline.settings
    grants = _on_topics(
        {s.topic: ("READ", "DESCRIBE"), s.results_topic: ("READ",),
         s.scheduled_topic: ("READ", "WRITE", "DESCRIBE")}
    )  # fmt: skip
    grants += [("GROUP", s.group_id, "PREFIXED", op) for op in ("READ", "DESCRIBE")]
    _grant(secure_kafka, "worker", grants)
    pipeline.celery_broker_url = pipeline.settings.redis_url
    consumer = pipeline.start_consumer(**_overrides(users["worker"]))
    name = f"kafcel:test:{uuid.uuid4().hex[:10]}"
    _submit_records(pipeline, users["producer"], name, 3)
    wait_until(pipeline.fully_committed, 90, "3 tasks settled by the consuming worker")
    assert users["worker"]["KAFCEL_SASL_PASSWORD"] not in consumer.log_path.read_text()
