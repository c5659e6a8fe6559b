"""`kafcel demo` end to end, small, on both paths: the JSON line and its independent ledger
figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kafcel.dev import DevStack

from .conftest import ROOT, base_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("demo_path", ["worker", "bridge"])
def test_demo_json_line_reports_nothing_lost_or_doubled(  # type: ignore[no-untyped-def]
    stack: DevStack, tmp_path, demo_path: str
) -> None:
    kafka_port = stack.bootstrap_servers.rsplit(":", 1)[1]
    redis_port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
    # The demo names the broker from the jars it runs, in its work directory's
    # .kafcel/kafka: here those of the session's broker, as in a checkout that fetched them.
    (tmp_path / ".kafcel").mkdir()
    (tmp_path / ".kafcel" / "kafka").symlink_to(ROOT / ".kafcel" / "kafka")
    out = subprocess.run(
        [sys.executable, "-m", "kafcel", "demo", "--tasks", "300", "--json",
         "--path", demo_path,
         "--kafka-port", kafka_port, "--redis-port", redis_port, "--broker", stack.broker],
        capture_output=True, text=True, env=base_env(stack), cwd=tmp_path, timeout=280,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["path"] == demo_path
    assert f"path {demo_path}" in out.stderr
    assert re.fullmatch(r"apache-kafka \d+\.\d+\.\d+", summary["broker"]), summary["broker"]
    assert summary["broker"] == stack.broker_label()
    for field in ("submitted", "completed", "retried", "dlq", "lost", "duplicates", "lag",
                  "elapsed_s", "tasks_per_s"):  # fmt: skip
        assert field in summary
    assert summary["submitted"] == summary["completed"] == 300
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["lag"] == 0
    assert summary["retried"] == summary["retried_planted"] == 3
    assert summary["dlq"] == summary["dlq_planted"] == 3
    # The status report at the end names who consumed the topic: a bridge on path A,
    # only the consuming worker on path B.
    consumers = summary["status"]["bridges"]
    assert [c["role"] for c in consumers] == [demo_path], consumers
    assert {p["status"] for p in summary["status"]["partitions"]} == {"OK"}
    assert "settled" in out.stderr  # the progress bar was shown


def test_demo_refuses_an_unknown_path() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kafcel", "demo", "--path", "kombu"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--path" in out.stderr, out.stderr
