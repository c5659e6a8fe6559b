"""The chaos suite's fast subset (N = 1,000) through the real command: ``kafcel chaos``,
on its own Apache Kafka and again on its own Tansu.

The full suite (N = 10,000, every scenario, the kombu-kafka rows) is ``make chaos``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from kafcel.chaos.runner import select
from kafcel.chaos.scenarios import FAST, FAST_PATH_B, FAST_RABBITMQ
from kafcel.errors import KafcelError

from .conftest import ROOT

pytestmark = [pytest.mark.integration]


# The suite starts its own broker: `broker` only says which (tansu-marked: both).
@pytest.mark.tansu
@pytest.mark.timeout(900)
def test_fast_subset_loses_nothing_duplicates_nothing_and_keeps_key_order(broker: str) -> None:
    fast_subset(broker, "kafcel", FAST)


@pytest.mark.timeout(900)
def test_path_b_fast_subset_loses_nothing_duplicates_nothing_and_keeps_key_order() -> None:
    """The same with the Celery workers consuming the task topic themselves."""
    fast_subset("kafka", "kafcel-worker", FAST_PATH_B)


@pytest.mark.rabbitmq
@pytest.mark.timeout(900)
def test_rabbitmq_rows_lose_nothing_duplicate_nothing_and_keep_key_order() -> None:
    """RabbitMQ as Celery's broker: killed -9 and started again; a worker killed 5 times."""
    fast_subset("kafka", "kafcel", FAST_RABBITMQ, celery_broker="rabbitmq")


def _chaos(args: list[str], *, timeout_s: float) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`kafcel chaos --json ARGS` as a user runs it, and its last line's report."""
    proc = subprocess.run(
        [sys.executable, "-m", "kafcel", "chaos", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(lines[-1])


def fast_subset(
    broker: str, system: str, fast: tuple[str, ...], *, celery_broker: str = "redis"
) -> None:
    # Apache Kafka's own node faults (kafka-kill-9) are not run on Tansu.
    chosen = [
        s
        for s in select((), broker=broker)
        if s.system == system and s.name in fast and s.celery_broker == celery_broker
    ]
    names = [s.name for s in chosen]
    only = [arg for s in chosen for arg in ("--only", s.key)]
    proc, report = _chaos(["--tasks", "1000", "--broker", broker, *only], timeout_s=880)
    # Named as the running broker reports itself: "apache-kafka 4.4.0", "tansu 0.6.0".
    kind = {"kafka": "apache-kafka", "tansu": "tansu"}[broker]
    assert re.fullmatch(rf"{kind} \d+\.\d+\.\d+", report["broker"]), report["broker"]
    rows = {row["name"]: row for row in report["scenarios"]}
    assert set(rows) == set(names)
    for row in rows.values():
        assert row["system"] == system
        assert row["broker"].split()[0] == celery_broker, row["broker"]
        assert set(row) >= {
            "name", "system", "lost", "duplicates", "out_of_order", "unexpected",
            "submit_failed", "dlq_expected", "dlq", "peak_lag", "drain_s",
        }  # fmt: skip
        assert row["lost"] == 0, row
        assert row["duplicates"] == 0, row
        assert row["out_of_order"] == 0, row
        assert row["unexpected"] == 0, row
        assert row["dlq"] == row["dlq_expected"], row
        assert row["passed"], row
    if "poison" in rows:
        assert rows["poison"]["dlq_expected"] > 50
    if broker == "kafka" and "kafka-kill-9" in fast:
        assert "kafka-kill-9" in rows
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.timeout(600)
def test_the_kombu_kafka_worker_kill_row_kills_its_worker() -> None:
    """kombu's transport may lose or reorder (that row's verdict is its own), but the
    fault must run: the kombu rig takes the same calls as kafcel's."""
    _, report = _chaos(["--tasks", "500", "--only", "kombu-kafka:worker-kill-9"], timeout_s=580)
    (row,) = report["scenarios"]
    assert row["system"] == "kombu-kafka" and row["name"] == "worker-kill-9"
    assert "note" not in row, row["note"]
    assert any(f.endswith("SIGKILL worker 0") for f in row["faults"]), row["faults"]


def test_unknown_scenario_is_named_in_a_clear_error() -> None:
    with pytest.raises(KafcelError, match="unknown scenario"):
        select(("no-such-fault",))
    proc = subprocess.run(
        [sys.executable, "-m", "kafcel", "chaos", "--only", "no-such-fault"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "unknown scenario(s) no-such-fault" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_faults_of_kafka_nodes_are_refused_on_tansu_by_name_and_left_out_otherwise() -> None:
    with pytest.raises(KafcelError, match=r"kafka-kill-9 fault.* --broker kafka"):
        select(("kafka-kill-9",), broker="tansu")
    on_tansu = {s.name for s in select((), broker="tansu")}
    assert "kafka-kill-9" not in on_tansu and "leader-kill" not in on_tansu
    assert {"kafka-kill-9", "leader-kill", "broker-pause"} <= {s.name for s in select(())}
