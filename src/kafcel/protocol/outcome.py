"""Task outcomes on the results topic: what the worker publishes and the bridge settles on.

One record per final outcome (success, or failure after retries), keyed like the request
so downstream consumers keep per-key order. The bridge settles the request's offset when it
reads the outcome; other services (Flink, Spark...) may read the same topic.
"""

from __future__ import annotations

import copy
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from ..errors import KafcelError
from .deadletter import clip

__all__ = ["FAILURE", "REVOKED", "REVOKED_BY_OPERATOR", "SUCCESS", "Origin", "Outcome"]

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
# Expired before it could run, revoked by an operator, or unknown to the worker: final.
REVOKED = "REVOKED"
# The error_class of a REVOKED outcome an operator caused (revoke, revoke(terminate=True)):
# it settles without a dead letter unless KAFCEL_DLQ_REVOKED is set.
REVOKED_BY_OPERATOR = "TaskRevoked"
_STATUSES = (SUCCESS, FAILURE, REVOKED)
# Far below what any producer sends (message.max.bytes is 1,000,000 by default).
MAX_OUTCOME_BYTES = 512 * 1024


# Where an outcome keeps its encoding (frozen: set through __dict__, as
# functools.cached_property does).
_ENCODED = "_kafcel_encoded"


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, kw_only=True)
class Origin:
    """Where a task request came from, carried in the Celery message header ``kafcel``."""

    topic: str
    partition: int
    offset: int
    key: str | None = None
    results_topic: str = ""
    dlq_topic: str = ""
    trace_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    replays: int = 0  # the record's kafcel-replay-count: a failure's DLQ record keeps it
    timestamp_ms: int | None = None  # the record's: workers time end to end from it
    # Which dispatch this is: the bridge instance and its assignment of the partition.
    # The outcome carries it back, so an answer to an earlier assignment's dispatch can
    # never settle the record as read again by a later one.
    fence: str | None = None

    def to_header(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies, a cost per dispatched task.
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "results_topic": self.results_topic,
            "dlq_topic": self.dlq_topic,
            "trace_id": self.trace_id,
            "headers": dict(self.headers),
            "replays": self.replays,
            "timestamp_ms": self.timestamp_ms,
            "fence": self.fence,
        }

    @classmethod
    def from_header(cls, raw: Any) -> Origin | None:
        """Parse the header; ``None`` for a task that kafcel did not dispatch."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls(
                topic=str(raw["topic"]),
                partition=int(raw["partition"]),
                offset=int(raw["offset"]),
                key=raw.get("key"),
                results_topic=str(raw.get("results_topic", "")),
                dlq_topic=str(raw.get("dlq_topic", "")),
                trace_id=raw.get("trace_id"),
                headers=dict(raw.get("headers") or {}),
                replays=int(raw.get("replays") or 0),
                timestamp_ms=int(raw["timestamp_ms"]) if raw.get("timestamp_ms") else None,
                fence=str(raw["fence"]) if raw.get("fence") else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The final state of one task, as published on the results topic."""

    task_id: str
    task: str
    status: str
    retries: int = 0
    result: Any = None
    error_class: str | None = None
    error_message: str | None = None
    origin_topic: str = ""
    origin_partition: int = -1
    origin_offset: int = -1
    headers: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    finished_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # True when a redelivered copy of an already finished task re-announces its outcome.
    duplicate: bool = False
    # The dispatch it answers (Origin.fence); None from writers that predate fences.
    fence: str | None = None
    v: int = 1
    # Fields a newer kafcel wrote that this version does not know: kept, and written
    # back as they came when the outcome is re-announced from a done marker.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {self.status!r}")

    def encode(self) -> bytes:
        """The record, at most ``MAX_OUTCOME_BYTES`` whatever the task returned or raised:
        the result, then the request's headers, give way to a note of their size (the
        full result stays in Celery's result backend); the error message is clipped.

        Encoded once: a worker writes the same bytes to the done marker and the record."""
        cached: bytes | None = self.__dict__.get(_ENCODED)
        if cached is None:
            cached = self.__dict__[_ENCODED] = self._encode()
        return cached

    def _encode(self) -> bytes:
        data = asdict(self)
        if self.error_message is not None:
            data["error_message"] = clip(self.error_message)
        extra = data.pop("extra")
        if extra:
            data = {**extra, **data}
        try:
            raw = _dump(data)
        except (TypeError, ValueError):
            # A task may return something JSON cannot carry; the outcome must still go out.
            data["result"] = repr(self.result)
            raw = _dump(data)
        for name in ("result", "headers"):
            if len(raw) <= MAX_OUTCOME_BYTES:
                break
            data[name] = {f"kafcel_{name}_omitted_bytes": len(_dump({name: data[name]}))}
            raw = _dump(data)
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> Outcome:
        """Read an outcome, also one a newer kafcel wrote (rolling upgrades).

        Unknown fields go to ``extra``; a status or version this one does not know is
        read as it is (every outcome is final: the bridge settles on it). Only a record
        without a string ``task_id`` and ``status`` is no outcome at all.
        """
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise KafcelError(f"not a kafcel outcome record: {exc}") from exc
        if not isinstance(data, dict):
            raise KafcelError(f"not a kafcel outcome record: a JSON {type(data).__name__}")
        for name in ("task_id", "status"):
            if not isinstance(data.get(name), str):
                raise KafcelError(f"not a kafcel outcome record: no string {name!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["extra"] = {k: v for k, v in data.items() if k not in known}
        outcome = object.__new__(cls)
        # Set field by field, past __post_init__: its status check guards what this
        # version writes, not what a newer one wrote.
        for f in fields(cls):
            if f.name in values:
                value = values[f.name]
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            elif f.default is not MISSING:
                value = f.default
            else:
                value = ""  # ``task``: a newer writer may leave it out
            object.__setattr__(outcome, f.name, value)
        return outcome

    def answers(self, fence: str | None) -> bool:
        """Whether this outcome may settle the dispatch fenced by ``fence``."""
        return self.fence is None or self.fence == fence

    def announced_for(self, origin: Origin) -> Outcome:
        """This finished outcome re-announced for a later dispatch of its id."""
        # A copy, not dataclasses.replace: a done marker a newer worker wrote may hold
        # a status this version would refuse to construct.
        again = copy.copy(self)
        again.__dict__.pop(_ENCODED, None)
        object.__setattr__(again, "duplicate", True)
        object.__setattr__(again, "fence", origin.fence)
        return again
