"""A valid record on its way to Celery: what it carries, and how it is sent.

One Celery message per record, with the record's task id and a ``kafcel`` header, so
Celery's workers, Flower and ``celery inspect`` see ordinary tasks (:mod:`.publish`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import Celery
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from ..protocol.envelope import Envelope, task_id_for
from ..protocol.headers import replay_count
from ..protocol.outcome import Origin
from ..settings import Settings
from .schedule import Parked
from .tracker import TP

__all__ = ["Dispatch", "declare_queues", "make_dispatch"]

log = logging.getLogger("kafcel.bridge")


# Records up to this size keep their decoded envelope too (see Dispatch).
_KEEP_DECODED_BYTES = 4096


@dataclass(frozen=True)
class Dispatch:
    """A valid record on its way to Celery (or waiting behind its key).

    Its bytes are kept raw in ``msg`` (what the DLQ gets if Celery never runs the task).
    A large record's ``envelope`` keeps no payload (args, kwargs, headers): one copy in
    memory, decoded again by :meth:`payload` when the task is sent. A small record keeps
    both, which costs less than decoding twice (5 us a record).
    """

    envelope: Envelope
    task_id: str
    origin: Origin
    tp: TP
    offset: int
    slot: Hashable | None
    fence: str  # the partition's assignment it was read in (Origin.fence)
    msg: Message  # the original record: what goes to the DLQ if Celery never runs it
    # Absolute, fixed at the first dispatch: a redispatched copy keeps the schedule and
    # the deadline of the original instead of restarting a countdown.
    eta: datetime | None
    expires: datetime | None
    # The Celery queue of the record's lane, for a record that names none.
    lane_queue: str | None = None

    @property
    def queue(self) -> str | None:
        """The Celery queue: the record's own, else its lane's (None: Celery's routing)."""
        return self.envelope.queue or self.lane_queue

    def payload(self) -> Envelope:
        """The whole envelope: kept for a small record, decoded again from a large one
        (validated when it was fetched)."""
        value = self.msg.value() or b""
        if len(value) <= _KEEP_DECODED_BYTES:
            return self.envelope
        return Envelope.decode(value, max_bytes=len(value))

    def parked(self) -> Parked:
        """This task as it waits in the scheduled topic (it must have an eta)."""
        assert self.eta is not None
        return Parked(
            task_id=self.task_id,
            topic=self.origin.topic,
            partition=self.origin.partition,
            offset=self.origin.offset,
            timestamp_ms=self.origin.timestamp_ms,
            eta=self.eta,
            expires=self.expires,
        )

    def wait_s(self) -> float:
        """Seconds until the task may start (its eta), 0 if it may start now."""
        if self.eta is None:
            return 0.0
        return max((self.eta - datetime.now(UTC)).total_seconds(), 0.0)


def _when(stamp_ms: int, now: datetime) -> datetime:
    """A record's timestamp as a time; ``now`` for one no calendar holds (a producer
    writing microseconds: year 55,000)."""
    try:
        return datetime.fromtimestamp(stamp_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return now


def make_dispatch(
    msg: Message,
    envelope: Envelope,
    tp: TP,
    offset: int,
    slot: Hashable | None,
    s: Settings,
    *,
    fence: str,
    parked: Parked | None = None,
) -> Dispatch:
    """The dispatch of ``msg`` read at ``tp``/``offset``; a ``parked`` record (read from
    the scheduled topic) keeps the task id, times and origin of the record it parks."""
    kind, timestamp_ms = msg.timestamp()
    stamp = timestamp_ms if kind != TIMESTAMP_NOT_AVAILABLE else None
    if parked is not None:
        stamp = parked.timestamp_ms
    key = msg.key()
    origin = Origin(
        topic=tp[0] if parked is None else parked.topic,
        partition=tp[1] if parked is None else parked.partition,
        offset=offset if parked is None else parked.offset,
        key=key.decode("utf-8", "surrogateescape") if key is not None else None,
        results_topic=s.results_topic,
        dlq_topic=s.dlq_topic,
        trace_id=envelope.trace_id,
        # The envelope's headers join the origin when the task is sent (publish.py).
        replays=replay_count(msg.headers()),
        timestamp_ms=stamp,
        fence=fence,
    )
    # Relative times count from the submission: the record's timestamp (a producer's
    # clock ahead of ours counts as now), so a record that waited behind its key or in
    # a backlog does not start late or expire late.
    now = datetime.now(UTC)
    submitted = now if stamp is None else min(now, _when(stamp, now))
    eta = envelope.eta
    if envelope.countdown is not None:
        eta = submitted + timedelta(seconds=envelope.countdown)
    expires = envelope.expires
    if expires is not None and not isinstance(expires, datetime):
        expires = submitted + timedelta(seconds=expires)
    task_id = task_id_for(envelope, tp[0], tp[1], offset, stamp)
    if parked is not None:
        task_id, eta, expires = parked.task_id, parked.eta, parked.expires
    if len(msg.value() or b"") > _KEEP_DECODED_BYTES:
        envelope = envelope.without_payload()
    lane_queue = s.queue or None
    return Dispatch(
        envelope, task_id, origin, tp, offset, slot, fence, msg, eta, expires, lane_queue
    )


def declare_queues(app: Celery, names: set[str | None]) -> None:
    """Declare ``names`` (None: the default queue) again on the broker.

    kombu's Redis transport keeps its exchange-to-queue bindings in Redis: after a FLUSHALL
    or a restart without persistence, a published message matches no queue and is
    dropped without an error, until someone declares the queue again.
    """
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in {*names, None}:
                queue = app.amqp.queues[name or app.conf.task_default_queue]
                queue.bind(channel).declare()
    except Exception as exc:  # the broker is down again: the next check retries
        log.warning("could not re-declare Celery queues: %s", exc)
