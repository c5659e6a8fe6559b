"""A scenario's row, and a run's rows with the broker they ran on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScenarioResult", "Suite"]


@dataclass
class ScenarioResult:
    name: str
    system: str
    lost: int
    duplicates: int
    out_of_order: int
    dlq_expected: int
    dlq: int
    peak_lag: int | None
    drain_s: float
    reruns: int = 0
    redispatched: int = 0
    unexpected: int = 0
    submit_failed: int = 0
    nodes: int = 1
    faults: list[str] = field(default_factory=list)  # what struck and when
    broker: str = ""  # Celery's broker, as it reports itself ("rabbitmq 3.10.8")
    note: str = ""
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = (
            self.lost == 0
            and self.duplicates == 0
            and self.out_of_order == 0
            and self.unexpected == 0
            and self.dlq == self.dlq_expected
            and not self.note
        )

    def row(self) -> dict[str, Any]:
        keys = (
            "name", "system", "nodes", "lost", "duplicates", "out_of_order", "unexpected",
            "submit_failed", "dlq_expected", "dlq",
        )  # fmt: skip
        out = {k: getattr(self, k) for k in keys}
        if self.broker:
            out["broker"] = self.broker
        out.update(peak_lag=self.peak_lag, drain_s=round(self.drain_s, 1))
        out.update(reruns=self.reruns, redispatched=self.redispatched)
        out["passed"] = self.passed
        if self.faults:
            out["faults"] = self.faults
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Suite:
    """A run's rows and the broker they ran on, as it reported itself."""

    broker: str  # e.g. "apache-kafka 4.4.0", "tansu 0.6.0"
    results: list[ScenarioResult]
