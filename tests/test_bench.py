"""``make bench`` still runs: a tiny run through the real CLI, figures present (not judged).

The values belong to the full run (docs/benchmarks.md); here only that every figure and
ratio is measured, the results file and the plot are written, and the last line is JSON.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "submit_vs_send_task",
    "submit_vs_raw_produce",
    "dispatch_vs_send_task",
    "e2e_vs_celery",
    "e2e_vs_kombu_kafka",
    "p99_added_ms",
    "bridge_rss_mb",
    # Path B: the workers consume Kafka themselves (issue 14).
    "e2e_worker_vs_celery",
    "p99_added_worker_ms",
}
# Against Redis's own LPUSH, on RabbitMQ, and the urgent lane's p99 idle and behind a bulk
# backlog (issue 15): measured, with no target.
RATIOS = TARGETS | {
    "dispatch_vs_raw_lpush",
    "e2e_rabbitmq_vs_celery",
    "urgent_p99_ms",
    "urgent_p99_backlog_ms",
}


@pytest.mark.timeout(600)
def test_a_tiny_bench_measures_every_figure(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks.bench", "--quick", "--scale", "0.02"]
    argv += ["--repeat", "1", "--json", "--out", str(tmp_path)]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=560, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Apache Kafka by default, named as its jar reports itself ("apache-kafka 4.4.0").
    assert re.fullmatch(r"apache-kafka \d+\.\d+\.\d+", out["broker"]), out["broker"]
    assert set(out["ratios"]) == RATIOS
    assert all(math.isfinite(v) for v in out["ratios"].values()), out["ratios"]
    for section, names in {
        "enqueue": ("send_task", "kombu_kafka_send_task", "kafcel_submit", "raw_produce"),
        "dispatch": ("kafcel_bridge", "raw_lpush", "send_task"),
        "e2e": (
            "kafcel",
            "kafcel_worker",
            "celery",
            "kombu_kafka",
            "kafcel_rabbitmq",
            "celery_rabbitmq",
        ),
        "ceiling": ("raw_consume",),
    }.items():
        for name in names:
            assert out[section][name] > 0, (section, name)
    for system in ("kafcel", "kafcel_worker", "celery"):
        for load in ("50", "90"):
            point = out["latency"][system][load]
            assert 0 <= point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    assert out["memory"]["bridge_peak_rss_mb"] > 0
    # Lanes: the urgent lane idle, then behind a bulk backlog that was still draining (a
    # tiny run's backlog has a floor of a few thousand records so that it is).
    lanes = out["lanes"]
    for point in (lanes["idle"], lanes["backlog"]):
        assert 0 <= point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    assert lanes["backlog"]["records"] == out["sizes"]["lanes_backlog"] >= 2000
    assert lanes["backlog"]["drain_rate"] > 0
    assert 0 < lanes["backlog"]["bulk_left"] < lanes["backlog"]["records"]
    assert lanes["backlog"]["void"] is False
    assert set(out["targets"]) == TARGETS
    # Every process's CPU per task, the broker's included, for every system; path B's
    # workers consume Kafka themselves: a worker and its pool, no bridge.
    cpu = out["e2e_cpu_us_per_task"]
    for system in ("kafcel", "kafcel_worker", "celery"):
        for role in ("apache-kafka", "bench (submitter)", "redis (broker)", "worker"):
            assert role in cpu[system], (system, role)
        assert "worker child 0" in cpu[system], system
    assert "bridge" in cpu["kafcel"]
    # RabbitMQ as Celery's broker: the bridge path and plain Celery on the same workers.
    assert re.fullmatch(r"rabbitmq \d+\.\d+\.\d+", out["rabbitmq"]), out["rabbitmq"]
    for system in ("kafcel_rabbitmq", "celery_rabbitmq"):
        for role in ("rabbitmq (broker)", "bench (submitter)", "worker", "worker child 0"):
            assert role in cpu[system], (system, role)
    assert "bridge" in cpu["kafcel_rabbitmq"]
    assert not any(role.startswith("bridge") for role in cpu["kafcel_worker"]), cpu
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
    png = next(tmp_path.glob("bench-*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
