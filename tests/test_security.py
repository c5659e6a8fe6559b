"""A production cluster's security, on the real servers: Redis with TLS only and an ACL
user (the once-guard, Celery's broker and result backend, bridge presence, status).
Secrets never show in logs or status output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from kafcel import Producer
from kafcel.dev import DevStack, free_ports

from .conftest import ROOT, Pipeline, wait_until
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
    s.up()
    try:
        yield s
    finally:
        s.down()


@pytest.fixture()
def secure(pipeline: Pipeline, secure_redis: DevStack) -> Iterator[Pipeline]:
    """The test's bridge and workers with every Redis use on the TLS Redis: once-guard
    (KAFCEL_REDIS_URL), and Celery's broker and result backend (the tests' app reads the
    same URL; CELERY_BROKER_URL names it too, with a queue of the test's own)."""
    pipeline.settings = pipeline.settings.replace(redis_url=secure_redis.redis_url)
    pipeline.celery_broker_url = secure_redis.redis_url
    yield pipeline
    for proc in pipeline.workers:
        proc.stop(timeout_s=30)
    pipeline.workers.clear()


def _kafcel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kafcel", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


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
