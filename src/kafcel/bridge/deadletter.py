"""The bridge's dead letters: why a record never became a task.

They are written by the one writer of bridge and workers (:mod:`kafcel.deadletter`); a
record counts as settled only once its DLQ copy is on Kafka, so a crash between the
decision and the write re-reads the record instead of losing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from confluent_kafka import Message

from ..deadletter import DeadLetterWriter
from ..errors import RecordRejected
from ..protocol.deadletter import DeadLetter
from ..protocol.headers import header_list, replay_count
from ..protocol.outcome import Origin
from .assignment import Assignment
from .dispatch import Dispatch
from .events import BridgeEvents
from .sequence import position
from .tracker import TP

__all__ = ["DeadLetters", "bridge_letter"]

log = logging.getLogger("kafcel.bridge")


def bridge_letter(
    msg: Message,
    exc: RecordRejected,
    *,
    error_class: str | None = None,
    task: str | None = None,
    task_id: str | None = None,
    origin: Origin | None = None,
) -> DeadLetter:
    """Why the bridge dead-letters ``msg``, and where it came from: its own position, or
    ``origin``'s for a task read from the scheduled topic (a replay goes back there)."""
    (topic, partition), offset = position(msg)
    if origin is not None:
        topic, partition, offset = origin.topic, origin.partition, origin.offset
    return DeadLetter(
        error_class=error_class or type(exc).__name__,
        error_message=exc.reason,
        field=exc.field,
        origin_topic=topic,
        origin_partition=partition,
        origin_offset=offset,
        stage="bridge",
        task=task,
        task_id=task_id,
        replays=replay_count(msg.headers()),
    )


# (partition, offset, slot, task id) of a record whose dead letter is on Kafka.
Settled = Callable[[TP, int, Hashable | None, str | None], None]


class DeadLetters:
    """The bridge's side of dead-lettering: what the letter says, and settling the record
    once Kafka has it, under the fence of the assignment it was written for (an
    acknowledgement arriving after the partition moved away and back settles nothing:
    the record was read again, and only that reading may settle it and free its key)."""

    def __init__(
        self,
        *,
        writer: DeadLetterWriter,
        assignment: Assignment,
        events: BridgeEvents,
        settled: Settled,
    ) -> None:
        self._writer = writer
        self._assignment = assignment
        self._events = events
        self._settled = settled
        self.written = 0

    def record(
        self,
        msg: Message,
        exc: RecordRejected,
        *,
        slot: Hashable | None = None,
        error_class: str | None = None,
        task: str | None = None,
        task_id: str | None = None,
        trace_id: str | None = None,
        origin: Origin | None = None,
    ) -> None:
        letter = bridge_letter(
            msg, exc, error_class=error_class, task=task, task_id=task_id, origin=origin
        )
        self._events.dead_lettered(msg, letter, trace_id)
        tp, offset = position(msg)
        fence = self._assignment.fence(tp)

        def written() -> None:
            self.written += 1
            if not self._assignment.current(tp, fence):
                log.info("DLQ write of %s[%d]@%d acknowledged after a rebalance", *tp, offset)
                return
            self._settled(tp, offset, slot, task_id)

        self._writer.write(
            letter,
            value=msg.value(),
            key=msg.key(),
            headers=header_list(msg),
            on_written=written,
            wanted=lambda: self._assignment.current(tp, fence),
        )

    def item(self, item: Dispatch, exc: RecordRejected, *, error_class: str | None = None) -> None:
        """A valid record Celery will not run, answering for its origin."""
        self.record(
            item.msg,
            exc,
            slot=item.slot,
            error_class=error_class,
            task=item.envelope.task,
            task_id=item.task_id,
            trace_id=item.envelope.trace_id,
            origin=item.origin,
        )
