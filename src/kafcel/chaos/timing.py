"""When a fault strikes: at random points of a run's progress (the share of orders whose
effect has happened), so it hits a busy pipeline whatever N and the machine's speed."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

__all__ = ["Progress", "moments", "reach"]

Progress = Callable[[], float]

# A fault waits at most this long for its moment: a stalled run must still end.
_MOMENT_TIMEOUT_S = 120.0


def moments(rng: random.Random, n: int, low: float = 0.05, high: float = 0.85) -> list[float]:
    """``n`` random points of progress, in order."""
    return sorted(rng.uniform(low, high) for _ in range(n))


def reach(progress: Progress, target: float, stop: threading.Event) -> bool:
    """Wait until the run has progressed to ``target``; False if the scenario ended."""
    deadline = time.monotonic() + _MOMENT_TIMEOUT_S
    while progress() < target and time.monotonic() < deadline:
        if stop.wait(0.05):
            return False
    return not stop.is_set()
