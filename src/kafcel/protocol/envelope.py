"""The v1 task envelope: one strict JSON object per Kafka record.

:meth:`Envelope.decode` is the bridge's trust boundary, so it checks the size before it
touches the bytes, accepts only strict JSON (no NaN, no duplicate keys, bounded nesting)
and never unpickles. The same rules ship as a JSON Schema (``schema/envelope-v1.json``)
for producers written in other languages.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib.resources.abc import Traversable
from itertools import accumulate
from typing import Any, Final

from ..errors import InvalidEncoding, InvalidJson, RecordTooLarge, SchemaViolation
from .schemas import load_schema, schema_path

__all__ = [
    "DEFAULT_MAX_BYTES",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "SCHEMA_PATH",
    "TASK_ID_NAMESPACE",
    "Envelope",
    "derive_task_id",
    "json_schema",
    "task_id_for",
]

DEFAULT_MAX_BYTES: Final = 1_048_576
MAX_SECONDS: Final = 315_360_000  # ten years
MAX_DEPTH: Final = 64
"""Deepest nesting of arrays/objects accepted; the envelope object itself is level 1."""
MAX_NAME_LENGTH: Final = 255
TASK_ID_NAMESPACE: Final = uuid.UUID("6f1c1d2e-5b7a-4f43-9a57-1b0c7d9e2a61")
SCHEMA_PATH: Final[Traversable] = schema_path("envelope")

# Explicit ranges instead of \s, so that Python and the JSON Schema (ECMA-262) engines
# agree on them; together they cover every character str.isspace() accepts, the C0/C1
# controls, and U+FEFF, which is invisible in logs.
_CONTROL: Final = "\\x00-\\x1f\\x7f-\\x9f"
_SPACE: Final = "\\x20\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
_TASK_BAD: Final = re.compile(f"[{_CONTROL}{_SPACE}]")
_ID_BAD: Final = re.compile(f"[{_CONTROL}]")

# Always matches from an opening quote (to the closing one or to the end), so stripping
# strings stays linear even on hostile input such as an unterminated run of \" escapes.
_JSON_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


# _NULL stands for an explicit JSON null, which no field accepts; None means "absent".
_NULL: Final = object()
_MISSING: Final = object()


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """One task request. Construction validates with the same rules as :meth:`decode`."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    eta: datetime | None = None
    countdown: float | None = None
    expires: datetime | float | None = None
    priority: int | None = None
    queue: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    created_at: str | None = None
    v: int = 1

    def __post_init__(self) -> None:
        _check_version(self.v)
        values = dict(self.__dict__)
        _normalise(values, from_json=False)
        for name in ("args", "kwargs", "headers", "eta", "expires"):
            if values[name] is not self.__dict__[name]:
                object.__setattr__(self, name, values[name])

    def without_payload(self) -> Envelope:
        """This envelope without its args, kwargs and headers: what the bridge keeps of a
        record in flight, whose raw bytes it keeps anyway (one copy in memory, not two)."""
        return replace(self, args=(), kwargs={}, headers={})

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; ``None`` and empty optional fields are left out.

        JSON has one array type, so tuples nested in args/kwargs/headers decode as lists.
        """
        for name in ("args", "kwargs", "headers"):
            # Checked here rather than left to json.dumps, which silently turns tuples
            # and int keys into something that decodes to a different value.
            problem = _non_json(getattr(self, name), 2)
            if problem is not None:
                where, what = problem
                raise SchemaViolation(f"{name}{where} {what}", field=name)
        doc: dict[str, Any] = {
            "v": self.v,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
        }
        if self.id is not None:
            doc["id"] = self.id
        if self.eta is not None:
            doc["eta"] = self.eta.isoformat()
        if self.countdown is not None:
            doc["countdown"] = self.countdown
        if self.expires is not None:
            exp = self.expires
            doc["expires"] = exp.isoformat() if isinstance(exp, datetime) else exp
        for name in ("priority", "queue", "headers", "trace_id", "created_at"):
            if (value := getattr(self, name)) is not None and (name != "headers" or value):
                doc[name] = value
        try:
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError as exc:  # integers above the interpreter's digit limit
            raise SchemaViolation(f"not representable as JSON: {exc}") from exc
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates have no UTF-8 form; \uXXXX escapes carry them losslessly.
            ascii_text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
            return ascii_text.encode("ascii")

    @classmethod
    def decode(cls, raw: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
        """Parse and validate one record value; raises an :class:`EnvelopeError` subclass."""
        if not raw:
            raise InvalidJson("record has no value")
        if len(raw) > max_bytes:
            raise RecordTooLarge(f"record is {len(raw)} bytes, above the limit of {max_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEncoding(
                f"not UTF-8: byte {raw[exc.start]:#04x} at position {exc.start} ({exc.reason})"
            ) from exc
        data = _parse(text)
        if _SURROGATE_ESCAPE.search(text):
            # \ud800 alone is valid JSON but no Unicode text: Celery's encoder and every
            # consumer downstream would fail on it.
            try:
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidEncoding("a string holds a lone UTF-16 surrogate escape") from exc
        if type(data) is not dict:
            raise SchemaViolation(f"top level must be a JSON object, got {_kind(data)}")
        # The version goes first: a newer envelope's extra fields are best reported as an
        # unsupported version, not as unknown fields.
        _check_version(data.get("v", _MISSING))
        if not data.keys() <= _FIELDS:
            name = next(key for key in data if key not in _FIELDS)
            raise SchemaViolation(f"unknown field {_show(name)}", field=name[:MAX_NAME_LENGTH])
        if "task" not in data:
            raise SchemaViolation("is required", field="task")
        if None in data.values():
            data = {key: _NULL if value is None else value for key, value in data.items()}
        values: dict[str, Any] = {**_ABSENT, "kwargs": {}, "headers": {}, **data}
        _normalise(values, from_json=True)
        # Every field is already checked and normalised, so skip __post_init__: decode
        # runs once per record and a second validation pass would double its cost.
        envelope = cls.__new__(cls)
        envelope.__dict__.update(values)
        return envelope


_FIELDS: Final = frozenset(f.name for f in fields(Envelope))
# Defaults of decode; kwargs and headers are left out as they need a fresh dict each time.
_ABSENT: Final[Mapping[str, Any]] = {
    f.name: f.default for f in fields(Envelope) if f.default is not MISSING
}


def derive_task_id(topic: str, partition: int, offset: int, timestamp_ms: int | None = None) -> str:
    """Stable task id of a record without ``id``: re-reading it yields the same id.

    The record's timestamp is part of the name when Kafka has one, so a topic deleted and
    created again (offsets from 0 again) does not reuse the ids of its previous records,
    which the once-guard still remembers as done.
    """
    name = f"{topic}/{partition}/{offset}"
    if timestamp_ms is not None and timestamp_ms >= 0:
        name += f"/{timestamp_ms}"
    return str(uuid.uuid5(TASK_ID_NAMESPACE, name))


def task_id_for(
    envelope: Envelope,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None = None,
) -> str:
    """The Celery task id of ``envelope`` read at ``topic``/``partition``/``offset``."""
    return envelope.id or derive_task_id(topic, partition, offset, timestamp_ms)


def json_schema() -> dict[str, Any]:
    """The shipped JSON Schema (draft 2020-12) of a v1 envelope, freshly loaded."""
    return load_schema("envelope")


# -- parsing -------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(f"duplicate key {_show(key)}")
            seen.add(key)
    return obj


def _no_constants(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # float() quietly turns 1e400 into inf, which could never be encoded again.
        raise InvalidJson(f"number {text[:40]} is out of range")
    return value


# Signed 64-bit below zero, unsigned 64-bit above: Go's int64/uint64, Java's long (and
# Long.parseUnsignedLong). JavaScript numbers lose precision beyond 2**53 already.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1


def _bounded_int(text: str) -> int:
    # Producers and consumers in Go or Java cannot hold more than 64 bits.
    if len(text) > 21:
        raise InvalidJson(f"integer {text[:24]}... does not fit in 64 bits")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise InvalidJson(f"integer {text} does not fit in 64 bits")
    return value


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_no_constants,
    parse_float=_finite_float,
    parse_int=_bounded_int,
)


def _max_depth(text: str) -> int:
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _parse(text: str) -> Any:
    # Counting brackets is cheap; the exact scan only runs when it could matter.
    if text.count("[") + text.count("{") > MAX_DEPTH and _max_depth(text) > MAX_DEPTH:
        raise InvalidJson(f"nesting deeper than {MAX_DEPTH}")
    if text.startswith("\ufeff"):
        raise InvalidJson("starts with a byte order mark")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidJson(f"nesting deeper than {MAX_DEPTH}") from exc
    except ValueError as exc:  # int() refusing a number with too many digits
        raise InvalidJson(f"integer with too many digits: {str(exc).split(';')[0]}") from exc


# -- field rules ---------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if value is None or value is _NULL:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _wrong(name: str, expected: str, value: Any) -> SchemaViolation:
    return SchemaViolation(f"must be {expected}, got {_kind(value)}", field=name)


def _check_version(value: Any) -> None:
    if value is _MISSING:
        raise SchemaViolation("is required", field="v")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong("v", "the integer 1", value)
    if value != 1:
        raise SchemaViolation(f"unsupported envelope version {value}, expected 1", field="v")


def _check_name(name: str, value: Any, bad: re.Pattern[str] | None = None, what: str = "") -> None:
    if not isinstance(value, str):
        raise _wrong(name, "a string", value)
    if not value:
        raise SchemaViolation("must not be empty", field=name)
    if len(value) > MAX_NAME_LENGTH:
        raise SchemaViolation(
            f"is {len(value)} characters, longer than {MAX_NAME_LENGTH}", field=name
        )
    if bad is not None and (found := bad.search(value)) is not None:
        raise SchemaViolation(
            f"must not contain {what}, found {found.group()!r} at index {found.start()}",
            field=name,
        )


def _check_object(name: str, value: Any, from_json: bool) -> dict[str, Any]:
    if type(value) is dict:
        obj: dict[str, Any] = value
    elif isinstance(value, Mapping):
        obj = dict(value)
    else:
        raise _wrong(name, "an object", value)
    if not from_json:  # JSON object keys are strings by construction
        for key in obj:
            if not isinstance(key, str):
                raise SchemaViolation(f"keys must be strings, got {_show(key)}", field=name)
    return obj


def _check_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(name, "a number of seconds", value)
    if not 0 <= value <= MAX_SECONDS:
        # Past ten years Celery's date arithmetic overflows: refuse it here, clearly.
        raise SchemaViolation(
            f"must be a finite number of seconds <= {MAX_SECONDS} and >= 0, got {value!r}",
            field=name,
        )


def _check_time(name: str, value: Any, from_json: bool) -> datetime:
    moment: datetime
    if from_json:
        if not isinstance(value, str):
            raise _wrong(name, "an ISO-8601 date-time string", value)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise SchemaViolation(
                f"is not an ISO-8601 date-time: {_show(value)}", field=name
            ) from exc
    elif isinstance(value, datetime):
        moment = value
    else:
        raise _wrong(name, "a datetime", value)
    # Naive times are taken as UTC so that an eta means the same instant on every host.
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _normalise(values: dict[str, Any], *, from_json: bool) -> None:
    """Check every field but ``v`` in schema order, normalising ``values`` in place.

    ``None`` means absent; decode has already replaced explicit JSON nulls by ``_NULL``.
    """
    _check_name("task", values["task"], _TASK_BAD, "whitespace or control characters")
    args = values["args"]
    if isinstance(args, list):
        values["args"] = tuple(args)
    elif not isinstance(args, tuple):
        raise _wrong("args", "an array", args)
    values["kwargs"] = _check_object("kwargs", values["kwargs"], from_json)
    if values["id"] is not None:
        _check_name("id", values["id"], _ID_BAD, "control characters")
    if values["eta"] is not None:
        values["eta"] = _check_time("eta", values["eta"], from_json)
    if values["countdown"] is not None:
        _check_seconds("countdown", values["countdown"])
        if values["eta"] is not None:
            raise SchemaViolation("give eta or countdown, not both", field="countdown")
    expires = values["expires"]
    if expires is not None:
        if isinstance(expires, str | datetime):
            values["expires"] = _check_time("expires", expires, from_json)
        elif isinstance(expires, bool) or not isinstance(expires, int | float):
            raise _wrong("expires", "an ISO-8601 date-time string or seconds", expires)
        else:
            _check_seconds("expires", expires)
    priority = values["priority"]
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise _wrong("priority", "an integer 0-9", priority)
        if not 0 <= priority <= 9:
            raise SchemaViolation(f"must be between 0 and 9, got {priority}", field="priority")
    if values["queue"] is not None:
        _check_name("queue", values["queue"])
    values["headers"] = _check_object("headers", values["headers"], from_json)
    for name in ("trace_id", "created_at"):
        if values[name] is not None and not isinstance(values[name], str):
            raise _wrong(name, "a string", values[name])


def _non_json(value: Any, depth: int) -> tuple[str, str] | None:
    """(path, problem) of the first part of ``value`` JSON cannot hold, or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT_MIN <= value <= INT_MAX else ("", "does not fit in 64 bits")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ("", "holds a lone UTF-16 surrogate, which is not text")
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", f"is {value!r}, which is not JSON")
    if isinstance(value, list | tuple | dict):
        if depth > MAX_DEPTH:
            return ("", f"nests deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return ("", f"has a {type(key).__name__} key {_show(key)}; keys must be str")
                if (found := _non_json(item, depth + 1)) is not None:
                    return (f"[{key!r}]{found[0]}", found[1])
        else:
            for index, item in enumerate(value):
                if (found := _non_json(item, depth + 1)) is not None:
                    return (f"[{index}]{found[0]}", found[1])
        return None
    return ("", f"is a {type(value).__name__}, which is not JSON")
