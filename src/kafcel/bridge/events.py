"""What happens to each record in the bridge, told once: to the logs and to the metrics.

The runner calls one method per event; this module turns it into a ``kafcel.events``
log line (``--log-format json``: one JSON object per event with task id, key,
topic/partition/offset and trace id) and into Prometheus counts when metrics are on.
Logs, ``/metrics`` and ``kafcel status`` therefore count the same things.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from ..protocol.deadletter import DeadLetter
from ..protocol.outcome import Outcome
from ..telemetry.logs import EVENTS_LOGGER
from .dispatch import Dispatch

if TYPE_CHECKING:
    from ..telemetry.metrics import BridgeMetrics

__all__ = ["INVALID_TASK", "BridgeEvents", "MetricsSink"]

log = logging.getLogger(EVENTS_LOGGER)

# Task label of records that never named a valid task: metric labels must stay bounded,
# and a hostile producer could otherwise create one time series per garbage name.
INVALID_TASK = "(invalid)"


class MetricsSink(Protocol):
    """What the bridge counts (implemented by :class:`kafcel.telemetry.metrics.BridgeMetrics`)."""

    def consumed(self, topic: str, task: str) -> None: ...

    def dispatched(self, topic: str, task: str, latency_s: float | None) -> None: ...

    def settled(self, topic: str, task: str, status: str, e2e_s: float | None) -> None: ...

    def dead_lettered(self, topic: str, task: str, error_class: str, stage: str) -> None: ...

    def redispatched(self, topic: str, task: str) -> None: ...

    def in_flight(self, count: int) -> None: ...

    def lags(self, lag: Mapping[tuple[str, int], int]) -> None: ...

    def gap_wait(self, total_s: float) -> None: ...


if TYPE_CHECKING:
    # Here, not in telemetry: the bridge imports telemetry, never the other way round.
    def _conforms(metrics: BridgeMetrics) -> MetricsSink:
        return metrics  # mypy checks BridgeMetrics against the protocol the bridge uses


def _record_age_s(msg: Message) -> float | None:
    """Seconds since Kafka stamped the record (its submit time for CreateTime topics)."""
    kind, stamp_ms = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or stamp_ms <= 0:
        return None
    return max(time.time() - stamp_ms / 1000.0, 0.0)


def _key(msg: Message) -> str | None:
    key = msg.key()
    return key.decode("utf-8", "replace") if key is not None else None


class BridgeEvents:
    def __init__(self, *, metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics

    def consumed(self, msg: Message, task: str | None) -> None:
        if self.metrics is not None:
            self.metrics.consumed(str(msg.topic()), task or INVALID_TASK)

    def dispatched(self, item: Dispatch) -> None:
        if self.metrics is None and not log.isEnabledFor(logging.INFO):
            return  # the hot path of a bridge without metrics or event logs
        latency_s = _record_age_s(item.msg)
        if self.metrics is not None:
            self.metrics.dispatched(item.tp[0], item.envelope.task, latency_s)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "dispatched %s", item.task_id, extra=self._fields("dispatched", item, latency_s)
            )

    def settled(self, item: Dispatch, outcome: Outcome) -> None:
        if self.metrics is None and not log.isEnabledFor(logging.INFO):
            return
        e2e_s = _record_age_s(item.msg)
        if self.metrics is not None:
            self.metrics.settled(item.tp[0], item.envelope.task, outcome.status, e2e_s)
        if log.isEnabledFor(logging.INFO):
            extra = self._fields("settled", item, e2e_s)
            extra["kafcel"]["status"] = outcome.status
            log.info("settled %s: %s", item.task_id, outcome.status, extra=extra)

    def redispatched(self, item: Dispatch) -> None:
        if self.metrics is not None:
            self.metrics.redispatched(item.tp[0], item.envelope.task)
        log.warning(
            "redispatching %s: no worker holds it",
            item.task_id,
            extra=self._fields("redispatched", item, None),
        )

    def dead_lettered(self, msg: Message, letter: DeadLetter, trace_id: str | None) -> None:
        task = letter.task or INVALID_TASK
        if self.metrics is not None:
            self.metrics.dead_lettered(letter.origin_topic, task, letter.error_class, letter.stage)
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            letter.origin_topic,
            letter.origin_partition,
            letter.origin_offset,
            letter.error_class,
            letter.error_message,
            extra={
                "kafcel": {
                    "event": "dead_lettered",
                    "task_id": letter.task_id,
                    "task": letter.task,
                    "key": _key(msg),
                    "topic": letter.origin_topic,
                    "partition": letter.origin_partition,
                    "offset": letter.origin_offset,
                    "trace_id": trace_id,
                    "error_class": letter.error_class,
                    "stage": letter.stage,
                }
            },
        )

    def gauges(
        self, *, in_flight: int, lag: dict[tuple[str, int], int], gap_wait_s: float = 0.0
    ) -> None:
        if self.metrics is None:
            return
        self.metrics.in_flight(in_flight)
        self.metrics.lags(lag)
        self.metrics.gap_wait(gap_wait_s)

    @staticmethod
    def _fields(event: str, item: Dispatch, latency_s: float | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "event": event,
            "task_id": item.task_id,
            "task": item.envelope.task,
            "key": item.origin.key,
            "topic": item.tp[0],
            "partition": item.tp[1],
            "offset": item.offset,
            "trace_id": item.envelope.trace_id,
        }
        if latency_s is not None:
            fields["latency_ms"] = round(latency_s * 1000.0, 1)
        return {"kafcel": fields}
