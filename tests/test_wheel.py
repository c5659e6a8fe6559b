"""kafcel as a user installs it: ``python -m build`` makes a wheel and an sdist; the wheel,
in a fresh virtualenv without the dev extras, runs submit, a bridge, a worker and status
against the test stack, with the JSON schemas it ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from kafcel.dev.procs import ManagedProcess

from .conftest import ROOT, Pipeline, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# A user's app: nothing of the repository's (no tests.*, no PYTHONPATH to src/).
USER_APP = """
from kafcel.celery import app_from_env

app = app_from_env("wheelshop", queue_env="WHEEL_QUEUE", default_queue="wheel")


@app.task
def add(x, y):
    return x + y
"""


def _run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_in_a_fresh_virtualenv_and_runs_the_pipeline(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], timeout=600)
    (wheel,) = dist.glob("kafcel-*.whl")
    assert len(list(dist.glob("kafcel-*.tar.gz"))) == 1
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in ("envelope", "outcome", "deadletter"):
        assert f"kafcel/schema/{name}-v1.json" in shipped, name

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=600)
    home = tmp_path / "user"
    home.mkdir()
    (home / "shop.py").write_text(USER_APP)
    env = {k: v for k, v in pipeline.env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHONPATH": str(home), "WHEEL_QUEUE": f"wheel-{pipeline.settings.topic}"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(bin_dir / "python"), "-c", "import kafcel; print(kafcel.__file__)"], env=env)
    assert str(env_dir) in where.stdout, where.stdout  # the wheel's, not the source tree's

    procs = [
        ManagedProcess(
            name="wheel worker",
            argv=[
                str(bin_dir / "celery"),
                "-A",
                "shop:app",
                "worker",
                "-l",
                "INFO",
                "-c",
                "2",
                "-Q",
                env["WHEEL_QUEUE"],
                "-n",
                f"wheel-{time.time_ns()}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            log_path=pipeline.logs_dir / f"{pipeline.settings.topic}-wheel-worker.log",
            cwd=home,
        ).start(),
        ManagedProcess(
            name="wheel bridge",
            argv=[str(bin_dir / "kafcel"), "bridge", "-A", "shop:app"],
            env=env,
            log_path=pipeline.logs_dir / f"{pipeline.settings.topic}-wheel-bridge.log",
            cwd=home,
        ).start(),
    ]
    try:
        procs[0].wait_for_log(" ready.", timeout_s=60)
        procs[1].wait_for_log("assigned:", timeout_s=60)
        for i in range(3):
            argv = [str(bin_dir / "kafcel"), "submit", "shop.add", str(i), "1", "--key", f"k{i}"]
            _run(argv, env=env, cwd=home)
        wait_until(pipeline.fully_committed, 120, "the wheel's pipeline to settle 3 tasks")

        def status() -> dict[str, object]:
            out = _run([str(bin_dir / "kafcel"), "status", "--json"], env=env, cwd=home)
            doc: dict[str, object] = json.loads(out.stdout)
            return doc

        report = wait_until(lambda: (r := status())["lag"] == 0 and r, 60, "lag 0")
        assert report["topic"] == pipeline.settings.topic
        outcomes = pipeline.read(pipeline.settings.results_topic, until=lambda got: len(got) >= 3)
        results = sorted(json.loads(m.value())["result"] for m in outcomes)
        assert results == [1, 2, 3]
        # The schema as the wheel ships it, checked in the test's interpreter (jsonschema
        # is a dev extra, not in the fresh virtualenv).
        shipped = json.loads(zipfile.ZipFile(wheel).read("kafcel/schema/outcome-v1.json"))
        for m in outcomes:
            Draft202012Validator(shipped).validate(json.loads(m.value()))
    finally:
        for proc in reversed(procs):
            proc.stop(timeout_s=30)
