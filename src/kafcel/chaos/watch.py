"""The measurement loop of a scenario: ledger, DLQ and lag, sampled until drained."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from ..errors import KafkaError
from ..kafka.admin import group_lag, partitions_of
from ..kafka.config import client_config
from ..protocol.deadletter import parse_dlq_headers
from .ledger import Ledger
from .result import ScenarioResult
from .scenarios import Scenario
from .workload import Workload

__all__ = ["Watch"]


class Watch:
    """Samples ledger, DLQ and lag until the scenario has drained or stalled."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        topic: str,
        dlq_topic: str | None,
        workload: Workload,
        ledger: Ledger,
        cancel: threading.Event | None = None,
        reread_dlq: bool = False,
    ) -> None:
        self.cancel = cancel or threading.Event()
        self._reread_dlq = reread_dlq
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topic = topic
        self.workload = workload
        self.ledger = ledger
        self.peak_lag = 0
        self.applied = 0
        self.drained_at: float | None = None
        self._dlq_topic = dlq_topic
        self._dlq_seen: set[tuple[int, int]] = set()
        self._dlq: Consumer | None = None
        self._rescanned = time.monotonic()
        self._failed: frozenset[str] = frozenset()
        self._open_dlq()

    def _open_dlq(self) -> None:
        """(Re)read the DLQ from its start. On Tansu a fresh reader catches a record shown
        late (several producers write the DLQ; see design-notes on out-of-order offsets);
        Apache Kafka shows every record in offset order, so one reader is enough there."""
        if self._dlq_topic is None:
            return
        if self._dlq is not None:
            self._dlq.close()
        self._dlq = Consumer(
            {
                **client_config(self.bootstrap_servers),
                "group.id": f"chaos-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        parts = partitions_of(self.bootstrap_servers, self._dlq_topic)
        self._dlq.assign([TopicPartition(self._dlq_topic, p, 0) for p in parts])
        self._rescanned = time.monotonic()

    def progress(self) -> float:
        """Share of the workload's orders whose effect has happened (for fault timing)."""
        return self.applied / max(len(self.workload.orders), 1)

    def _sample(self) -> tuple[int, int, int]:
        behind = len(self._dlq_seen) < self.workload.dlq_expected
        if self._reread_dlq and behind and time.monotonic() - self._rescanned > 15:
            self._open_dlq()
        for msg in self._dlq.consume(1000, timeout=0.1) if self._dlq is not None else ():
            if msg.error() is not None:
                continue
            h = parse_dlq_headers(msg.headers())  # type: ignore[arg-type]
            # A record dead-lettered twice (bridge killed before its commit) counts once.
            self._dlq_seen.add(
                (int(h.get("origin.partition", -1)), int(h.get("origin.offset", -1)))
            )
        try:
            rows = group_lag(self.bootstrap_servers, self.group_id, self.topic)
        except KafkaError:
            rows = []  # the broker is down or failing over: lag unknown for now
        lag = sum(r.lag for r in rows) if rows else -1
        self.peak_lag = max(self.peak_lag, lag)
        # A submit reported as failed is not expected to run (it may: then it is no loss).
        self._failed = self.ledger.failed_submits()
        self.applied = len(self.ledger.applied_orders() - self._failed)
        return self.applied, len(self._dlq_seen), lag

    def _expected_orders(self) -> int:
        return len(self.workload.orders) - len(self._failed)

    def until_drained(
        self,
        *,
        busy: Callable[[], bool],
        stall_s: float,
        on_progress: Callable[[int, int], Any],
    ) -> str:
        last, last_change = (-1, -1, -1), time.monotonic()
        while True:
            if self.cancel.is_set():
                raise KeyboardInterrupt
            state = self._sample()
            want = (self._expected_orders(), self.workload.dlq_expected)
            on_progress(state[0] + state[1], sum(want))
            if state[:2] == want and state[2] == 0:
                if self.drained_at is None:
                    self.drained_at = time.monotonic()
                if not busy():
                    return ""
            else:
                self.drained_at = None
            now = time.monotonic()
            if state != last:
                last, last_change = state, now
            elif now - last_change > stall_s and not busy():
                return f"stalled for {stall_s:.0f}s"
            time.sleep(0.5)

    def result(
        self, scenario: Scenario, drain_s: float, note: str, *, redispatched: int
    ) -> ScenarioResult:
        counts = self.ledger.counts()
        history = self.ledger.history()
        if self._dlq is not None:
            self._dlq.close()
        failed = self.ledger.failed_submits()
        expected = {order for order, _, _ in self.workload.orders} - failed
        lost = len(expected - counts.applied_ids)
        # Two independent readings of the same run: the counters kept as effects arrived,
        # and the history checked afterwards. They must agree.
        by_counters = (lost, counts.duplicates, counts.out_of_order)
        by_history = (history.lost, history.duplicated, history.out_of_order)
        if history.unanswered and not note:
            # Before the comparison: the counters count an unanswered submit as lost.
            note = f"{history.unanswered} submit(s) never got an answer"
        if by_counters != by_history and not note:
            note = f"counters {by_counters} and history {by_history} disagree"
        return ScenarioResult(
            name=scenario.name,
            system=scenario.system,
            lost=max(lost, history.lost),
            duplicates=max(counts.duplicates, history.duplicated),
            out_of_order=max(counts.out_of_order, history.out_of_order),
            dlq_expected=self.workload.dlq_expected,
            dlq=len(self._dlq_seen),
            peak_lag=self.peak_lag,
            drain_s=drain_s,
            reruns=counts.reruns,
            redispatched=redispatched,
            unexpected=history.unexpected,
            submit_failed=history.failed,
            note=note,
        )
