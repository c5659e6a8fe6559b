"""Tasks the bridge dispatches are ordinary Celery tasks: ``celery inspect`` sees them.

Flower reads the same worker state through the same remote-control commands, so what
``celery inspect active`` shows here is what Flower's task list shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from kafcel import Producer

from .conftest import ROOT, TEST_APP, Pipeline, base_env, wait_until

pytestmark = pytest.mark.timeout(120)


def inspect(pipeline: Pipeline, *command: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", TEST_APP, "inspect", *command, "--json", "-t", "5"],
        cwd=ROOT,
        env=base_env(pipeline.stack),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_dispatched_task_shows_in_celery_inspect_while_it_runs(pipeline: Pipeline) -> None:
    pipeline.start_bridge()
    with Producer(settings=pipeline.settings) as producer:
        task_id = producer.submit("tests.app.slow", args=["visible", 7, 12.0], key="user-7")

    def active_copies() -> list[dict[str, Any]]:
        active = inspect(pipeline, "active")
        running = [t for tasks in active.values() for t in tasks]  # type: ignore[attr-defined]
        return [t for t in running if t["id"] == task_id]

    (task,) = wait_until(active_copies, 60, f"{task_id} active in celery inspect", 0.5)
    assert task["name"] == "tests.app.slow"
    assert task["args"] == ["visible", 7, 12.0]
    assert task["delivery_info"]["routing_key"] == "kafcel-tests"
    # And by id, as `celery inspect query_task` (and Flower's task page) asks for it.
    found = inspect(pipeline, "query_task", task_id)
    states = [entry for reply in found.values() for entry in reply.values()]  # type: ignore[attr-defined]
    assert states and states[0][0] == "active"
