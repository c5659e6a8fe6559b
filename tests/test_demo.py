"""`kafcel demo` end to end, small: the JSON line and its independent ledger figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kafcel.dev import DevStack

from .conftest import ROOT, base_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_demo_json_line_reports_nothing_lost_or_doubled(stack: DevStack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kafka_port = stack.bootstrap_servers.rsplit(":", 1)[1]
    redis_port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
    # The demo names the broker from the jars it runs, in its work directory's
    # .kafcel/kafka: here those of the session's broker, as in a checkout that fetched them.
    (tmp_path / ".kafcel").mkdir()
    (tmp_path / ".kafcel" / "kafka").symlink_to(ROOT / ".kafcel" / "kafka")
    out = subprocess.run(
        [sys.executable, "-m", "kafcel", "demo", "--tasks", "600", "--json",
         "--kafka-port", kafka_port, "--redis-port", redis_port, "--broker", stack.broker],
        capture_output=True, text=True, env=base_env(stack), cwd=tmp_path, timeout=280,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert re.fullmatch(r"apache-kafka \d+\.\d+\.\d+", summary["broker"]), summary["broker"]
    assert summary["broker"] == stack.broker_label()
    for field in ("submitted", "completed", "retried", "dlq", "lost", "duplicates", "lag",
                  "elapsed_s", "tasks_per_s"):  # fmt: skip
        assert field in summary
    assert summary["submitted"] == summary["completed"] == 600
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["lag"] == 0
    assert summary["retried"] == summary["retried_planted"] == 6
    assert summary["dlq"] == summary["dlq_planted"] == 3
    assert "settled" in out.stderr  # the progress bar was shown
