"""Is the bridge group keeping up? A Burrow-style evaluation per partition over a window.

Every bridge records, every few seconds, a sample per partition it owns: the offset it has
committed and the end offset it sees (``record_samples``, kept in Redis). A sample is the
bridge saying "I own this partition and here is my commit", so the evaluation reads:

- **OK**: no lag now, or none at some point in the window (Burrow's rule 1), or the
  committed offset moves and lag does not grow;
- **WARN**: the committed offset moves but lag grows over the whole window;
- **STALL**: a bridge reports the partition, lag > 0, and the committed offset has not
  moved for the whole window (tasks stuck: workers down, Celery's broker unreachable),
  unless the bridge says the oldest unsettled record is a task waiting for its eta; at
  once when the bridge says Celery cannot take a record of it (a routing error, the
  broker down: the reason is shown);
- **STOP**: lag > 0 and no bridge has reported the partition for longer than the
  window (no live consumer: bridges dead, or the group wedged).

Until the reports cover the whole window (one older than the window exists), a
moving-or-not verdict would be a guess, so a partition with lag is OK ("evaluating")
unless it is STOPped. A paused partition's report carries no end offset (librdkafka's
cached one is stale while nothing is fetched): it counts as a report, not as a lag.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis

__all__ = [
    "OK",
    "STALL",
    "STATUSES",
    "STOP",
    "WARN",
    "Evaluation",
    "Report",
    "Sample",
    "evaluate",
    "read_samples",
    "record_samples",
    "server_time_s",
    "worst",
]

log = logging.getLogger("kafcel.health")

OK, WARN, STALL, STOP = "OK", "WARN", "STALL", "STOP"
STATUSES = (OK, WARN, STALL, STOP)
_PREFIX = "kafcel:lagwin:"
_KEEP = 2000  # samples per partition: 66 min at one per 2 s, more than any sane window
_KEEP_S = 24 * 3600


@dataclass(frozen=True)
class Report:
    """What a bridge says of one partition it owns, every 2 s."""

    committed: int | None
    end: int | None  # None: not known (a paused partition's cached end is stale)
    # Its oldest unsettled record is a task waiting for its eta/countdown: the commit
    # is held on purpose, not stuck.
    eta_held: bool = field(default=False, kw_only=True)
    # Celery could not take a record of this partition through no fault of the record
    # (routing, broker access, the broker down): why. The commit is stuck until it can.
    held: str | None = field(default=None, kw_only=True)

    @property
    def lag(self) -> int | None:
        """Records after the committed offset; None when the end is not known."""
        return None if self.end is None else max(self.end - (self.committed or 0), 0)


@dataclass(frozen=True)
class Sample(Report):
    """A report as recorded: when (Redis server time, one clock for every bridge host and
    the reader)."""

    at_s: float = field(kw_only=True)


@dataclass(frozen=True)
class Evaluation:
    status: str
    reason: str


def evaluate(
    samples: Sequence[Sample], *, current: Report, now_s: float, window_s: float
) -> Evaluation:
    """The status of one partition from its bridge samples and a reading of Kafka taken
    at ``now_s`` (``current`` must know its end)."""
    lag = current.lag or 0
    if lag == 0:
        return Evaluation(OK, "caught up")
    ordered = sorted(samples, key=lambda s: s.at_s)
    recent = [s for s in ordered if now_s - s.at_s <= window_s]
    if any(s.lag == 0 for s in recent):
        return Evaluation(OK, "caught up within the window")
    if not ordered or now_s - ordered[-1].at_s > window_s:
        since = "ever" if not ordered else f"for {now_s - ordered[-1].at_s:.0f}s"
        return Evaluation(STOP, f"no bridge has reported a commit {since} while lag is {lag}")
    if recent and recent[-1].held:
        return Evaluation(STALL, f"dispatch held: {recent[-1].held}")
    if recent and recent[-1].eta_held:
        return Evaluation(OK, "the oldest unsettled task waits for its eta (scheduled)")
    before = [s for s in ordered if now_s - s.at_s > window_s]
    if not before:
        return Evaluation(OK, "evaluating (the window is not full yet)")
    # The window's state at its start, and every report since.
    span = [before[-1], *recent]
    if all(s.committed == current.committed for s in span):
        where = (
            "no offset committed yet"
            if current.committed is None
            else f"committed offset {current.committed} has not moved"
        )
        return Evaluation(STALL, f"{where} for {now_s - span[0].at_s:.0f}s while lag is {lag}")
    lags = [s.lag for s in span if s.lag is not None] + [lag]
    if all(b >= a for a, b in itertools.pairwise(lags)) and lags[-1] > lags[0]:
        return Evaluation(WARN, f"lag rising: {lags[0]} -> {lags[-1]} within the window")
    return Evaluation(OK, "consuming")


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=STATUSES.index, default=OK)


def _key(group: str, topic: str, partition: int) -> str:
    return f"{_PREFIX}{group}:{topic}:{partition}"


# Stamped with Redis's own clock, so a bridge host whose clock is off cannot look stopped.
_RECORD = """
local t = redis.call('TIME')
local at = t[1] .. '.' .. string.format('%06d', t[2])
for i, key in ipairs(KEYS) do
  redis.call('LPUSH', key, '[' .. at .. ',' .. ARGV[i + 2] .. ']')
  redis.call('LTRIM', key, 0, tonumber(ARGV[1]) - 1)
  redis.call('EXPIRE', key, ARGV[2])
end
return #KEYS
"""


def record_samples(
    pipe: redis.client.Pipeline[bytes],
    *,
    group: str,
    samples: Mapping[tuple[str, int], Report],
) -> None:
    """Queue a bridge's commit report on ``pipe``, one per owned partition."""
    if not samples:
        return
    keys = [_key(group, topic, partition) for topic, partition in samples]
    values = [
        json.dumps([r.committed, r.end, int(r.eta_held), r.held])[1:-1] for r in samples.values()
    ]
    pipe.eval(_RECORD, len(keys), *keys, _KEEP, _KEEP_S, *values)


def server_time_s(client: redis.Redis[bytes]) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def read_samples(
    client: redis.Redis[bytes],
    *,
    group: str,
    topic: str,
    partitions: Sequence[int],
    window_s: float,
) -> dict[int, list[Sample]]:
    """The recorded samples of each partition that a window needs (those in it and the
    last one before it), oldest first. Raises redis.RedisError."""
    out: dict[int, list[Sample]] = {p: [] for p in partitions}
    # One report every 2 s per bridge; two bridges may briefly report the same partition.
    depth = int(window_s) + 8
    with client.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.lrange(_key(group, topic, p), 0, depth)
        replies = pipe.execute()
    for p, raw in zip(partitions, replies, strict=True):
        for item in reversed(raw):
            try:
                at, committed, end, *flags = json.loads(item)
                held = flags[1] if len(flags) > 1 and isinstance(flags[1], str) else None
                out[p].append(
                    Sample(
                        None if committed is None else int(committed),
                        None if end is None else int(end),
                        eta_held=bool(flags and flags[0]),
                        held=held,
                        at_s=float(at),
                    )
                )
            except (ValueError, TypeError):
                continue
    return out
