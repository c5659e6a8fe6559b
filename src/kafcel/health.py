"""Is the bridge group keeping up? A Burrow-style evaluation per partition over a window.

Every bridge records, every few seconds, a sample per partition it owns: the offset it has
committed and the end offset it sees (``record_samples``, kept in Redis). A sample is the
bridge saying "I own this partition and here is my commit", so the evaluation reads:

- **OK**: no lag now, or none at some point in the window (Burrow's rule 1), or the
  committed offset moves and lag does not grow;
- **WARN**: the committed offset moves but lag grows over the whole window;
- **STALL**: a bridge reports the partition, lag > 0, and the committed offset has not
  moved for the whole window (tasks stuck: workers down, Celery's broker unreachable);
- **STOP**: lag > 0 and no bridge has reported the partition for longer than the
  window (no live consumer: bridges dead, or the group wedged).

Until the samples span half the window, a moving-or-not verdict would be a guess, so a
partition with lag is OK ("evaluating") unless it is STOPped.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

__all__ = [
    "OK",
    "STALL",
    "STATUSES",
    "STOP",
    "WARN",
    "Evaluation",
    "Sample",
    "evaluate",
    "read_samples",
    "record_samples",
    "worst",
]

log = logging.getLogger("kafcel.health")

OK, WARN, STALL, STOP = "OK", "WARN", "STALL", "STOP"
STATUSES = (OK, WARN, STALL, STOP)
_PREFIX = "kafcel:lagwin:"
_KEEP = 2000  # samples per partition: 66 min at one per 2 s, more than any sane window
_KEEP_S = 24 * 3600


@dataclass(frozen=True)
class Sample:
    at_s: float  # wall clock (time.time()): samples come from several hosts
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - (self.committed or 0), 0)


@dataclass(frozen=True)
class Evaluation:
    status: str
    reason: str


def evaluate(
    samples: Sequence[Sample], *, current: Sample, now_s: float, window_s: float
) -> Evaluation:
    """The status of one partition from its bridge samples and a reading taken now."""
    if current.lag == 0:
        return Evaluation(OK, "caught up")
    recent = sorted((s for s in samples if now_s - s.at_s <= window_s), key=lambda s: s.at_s)
    if any(s.lag == 0 for s in recent):
        return Evaluation(OK, "caught up within the window")
    newest = max((s.at_s for s in samples), default=None)
    if newest is None or now_s - newest > window_s:
        since = "ever" if newest is None else f"for {now_s - newest:.0f}s"
        return Evaluation(STOP, f"no bridge has committed {since} while lag is {current.lag}")
    if len(recent) < 2 or recent[-1].at_s - recent[0].at_s < window_s / 2:
        return Evaluation(OK, "evaluating (the window is not full yet)")
    first, last = recent[0], recent[-1]
    if first.committed == last.committed == current.committed:
        return Evaluation(
            STALL,
            f"committed offset {current.committed} has not moved for "
            f"{now_s - first.at_s:.0f}s while lag is {current.lag}",
        )
    lags = [s.lag for s in recent] + [current.lag]
    if all(b >= a for a, b in itertools.pairwise(lags)) and lags[-1] > lags[0]:
        return Evaluation(WARN, f"lag rising: {lags[0]} -> {lags[-1]} within the window")
    return Evaluation(OK, "consuming")


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=STATUSES.index, default=OK)


def _key(group: str, topic: str, partition: int) -> str:
    return f"{_PREFIX}{group}:{topic}:{partition}"


def record_samples(
    client: redis.Redis[bytes],
    *,
    group: str,
    samples: Mapping[tuple[str, int], tuple[int | None, int]],
    now_s: float | None = None,
) -> None:
    """A bridge's commit report: (committed, end) per partition it owns. Never raises."""
    if not samples:
        return
    at = time.time() if now_s is None else now_s
    try:
        with client.pipeline(transaction=False) as pipe:
            for (topic, partition), (committed, end) in samples.items():
                key = _key(group, topic, partition)
                pipe.lpush(key, json.dumps([round(at, 3), committed, end]))
                pipe.ltrim(key, 0, _KEEP - 1)
                pipe.expire(key, _KEEP_S)
            pipe.execute()
    except redis.RedisError as exc:
        log.debug("cannot record lag samples: %s", exc)


def read_samples(
    client: redis.Redis[bytes], *, group: str, topic: str, partitions: Sequence[int]
) -> dict[int, list[Sample]]:
    """The recorded samples of each partition, oldest first (empty if Redis is down)."""
    out: dict[int, list[Sample]] = {p: [] for p in partitions}
    try:
        with client.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.lrange(_key(group, topic, p), 0, -1)
            replies = pipe.execute()
    except redis.RedisError as exc:
        log.debug("cannot read lag samples: %s", exc)
        return out
    for p, raw in zip(partitions, replies, strict=True):
        for item in reversed(raw):
            try:
                at, committed, end = json.loads(item)
                out[p].append(
                    Sample(float(at), None if committed is None else int(committed), int(end))
                )
            except (ValueError, TypeError):
                continue
    return out
