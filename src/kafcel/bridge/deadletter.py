"""The bridge's dead letters: why a record never became a task.

They are written by the one writer of bridge and workers (:mod:`kafcel.deadletter`); a
record counts as settled only once its DLQ copy is on Kafka, so a crash between the
decision and the write re-reads the record instead of losing it.
"""

from __future__ import annotations

from confluent_kafka import Message

from ..dlq import DeadLetter
from ..errors import RecordRejected
from ..replay import replay_count
from ..results import Origin
from .sequence import position

__all__ = ["bridge_letter"]


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
