"""The package layout holds: every module imports on its own, and package data moved with
its modules.

``lint-imports`` (``make lint``) checks which way imports point; it cannot see an import
cycle that only breaks at run time, when the module at one end of it is the first one
imported. A fresh interpreter per module finds that: each module is imported first once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kafcel

ROOT = Path(kafcel.__file__).parent


def _modules() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = _modules()


def test_modules_found() -> None:
    assert {"kafcel.celery", "kafcel.protocol.envelope", "kafcel.worker.install"} <= set(MODULES)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr[-2000:]}"


@pytest.mark.timeout(10)
def test_package_data_loads() -> None:
    from kafcel.ops.dashboard import _page
    from kafcel.protocol.envelope import json_schema

    assert _page().lstrip().lower().startswith(b"<!doctype html")
    assert json_schema()["$id"] == "urn:kafcel:schema:envelope:v1"
