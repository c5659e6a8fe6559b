"""The CLI as a user runs it: real subprocesses, real stack, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from kafcel.dev import DevStack

from .conftest import ROOT, Pipeline, base_env, wait_until

pytestmark = pytest.mark.timeout(180)


def kafcel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kafcel", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.integration
def test_submit_then_status_shows_lag_zero(pipeline: Pipeline) -> None:
    env = pipeline.env()
    pipeline.start_bridge()
    out = kafcel("submit", "tests.app.record", "cli-ledger", '"item"', "--key", "u1", env=env)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    assert len(task_id) == 36
    wait_until(pipeline.fully_committed, 60, "the submitted task to settle")
    status = kafcel("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout.strip().splitlines()[-1])
    assert report["topic"] == pipeline.settings.topic
    assert report["lag"] == 0
    assert sum(p["end"] for p in report["partitions"]) == 1
    assert report["dlq"]["depth"] == 0
    table = kafcel("status", env=env)
    assert table.returncode == 0 and "lag" in table.stdout


@pytest.mark.integration
def test_status_of_a_missing_topic_is_one_line(stack: DevStack) -> None:
    env = {**base_env(stack), "KAFCEL_TOPIC": "no-such-topic-here"}
    out = kafcel("status", env=env)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bridge", "-A", "no_such_module:app"], "cannot load Celery app"),
        (["submit", "x.y", "--kwargs", "{bad"], "--kwargs is not valid JSON"),
        (["bridge", "-A", "x:app", "--max-in-flight", "0"], "max_in_flight must be at least 1"),
        (["bridge", "-A", "x:app", "--ordering", "sideways"], "ordering must be one of"),
        (["status", "--lag-window-s", "-1"], "lag_window_s"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero(args: list[str], expected: str) -> None:
    out = kafcel(*args, env={"PATH": "/usr/bin:/bin", "KAFCEL_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert out.returncode != 0
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr


def test_bad_environment_variable_is_named() -> None:
    out = kafcel("status", env={"PATH": "/usr/bin:/bin", "KAFCEL_MAX_IN_FLIGHT": "lots"})
    assert out.returncode == 1
    assert "KAFCEL_MAX_IN_FLIGHT='lots' is not a valid int" in out.stderr


def test_each_command_lists_only_the_settings_it_uses() -> None:
    """`dlq list` reads dead letters: no bridge tuning in its help; the bridge has it all."""
    dlq_list = kafcel("dlq", "list", "--help").stdout
    for used in ("--bootstrap-servers", "--topic", "--dlq-topic", "--kafka-config"):
        assert used in dlq_list, used
    for unused in ("--max-in-flight", "--ordering", "--outcome-batch-ms", "--metrics-port"):
        assert unused not in dlq_list, unused
    submit = kafcel("submit", "--help").stdout
    assert "--bootstrap-servers" in submit and "--topic" in submit
    assert "--redis-url" not in submit and "--dlq-topic" not in submit
    bridge = kafcel("bridge", "--help").stdout
    for used in ("--max-in-flight", "--ordering", "--redis-url", "--outcome-batch-ms"):
        assert used in bridge, used
    assert "--lag-window-s" not in bridge and "--worker-metrics-port" not in bridge


def test_submit_to_an_unreachable_kafka_fails_within_seconds_naming_the_address() -> None:
    from kafcel.dev import free_ports

    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    started = time.monotonic()
    out = kafcel("submit", "tests.app.record", "x", "--bootstrap-servers", address)
    elapsed = time.monotonic() - started
    assert out.returncode == 1
    assert elapsed < 15, elapsed
    assert out.stderr.count("\n") == 1 and address in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
