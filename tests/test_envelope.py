"""The v1 envelope: encode/decode round trip, every decode error, and the shipped schema."""

from __future__ import annotations

import json
import pickle
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

import kafcel.protocol.envelope as envelope_module
from kafcel.errors import (
    EnvelopeError,
    InvalidEncoding,
    InvalidJson,
    RecordTooLarge,
    SchemaViolation,
)
from kafcel.protocol.envelope import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_SECONDS,
    SCHEMA_PATH,
    TASK_ID_NAMESPACE,
    Envelope,
    derive_task_id,
    json_schema,
    task_id_for,
)

VALIDATOR = Draft202012Validator(json_schema())


def raw(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def doc(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "task": "app.tasks.add", **fields}


def nested(levels: int) -> Any:
    """``levels`` arrays, one inside the other."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


# Documents both the decoder and the JSON schema accept.
VALID_DOCS: list[dict[str, Any]] = [
    doc(),
    {"task": "t", "v": 1},
    doc(args=[1, "two", 3.5, None, True, [1], {"a": {}}], kwargs={"x": 1, "y": [None]}),
    doc(
        id="order-42",
        eta="2024-05-01T12:30:00Z",
        expires=3600,
        priority=0,
        queue="high",
        headers={"tenant": "acme"},
        trace_id="",
        created_at="2024-05-01T12:00:00+00:00",
    ),
    doc(countdown=0, expires="2024-05-01T12:30:00.123456+02:00"),
    doc(countdown=2.5, expires=0.5),
    doc(eta="2024-05-01"),
    doc(eta="2024-05-01 12:30"),
    doc(eta="2024-05-01T12:30:00.5-05:00", priority=9),
    doc(task="a" * 255, id="x" * 255),
    doc(task="ünï.cödé", id="an id with spaces", queue="a queue"),
    doc(args=nested(MAX_DEPTH - 1)),  # the object, then 63 arrays: exactly the limit
    doc(args=["[[[[" * 100, "{" * 100]),  # brackets inside strings are not nesting
]

# (document, field, piece of the reason): each breaks one rule the schema can express too.
INVALID_DOCS: list[tuple[Any, str | None, str]] = [
    ([], None, "top level must be a JSON object, got array"),
    ("envelope", None, "got string"),
    (doc(color="red"), "color", "unknown field 'color'"),
    ({"task": "t"}, "v", "is required"),
    (doc(v="1"), "v", "must be the integer 1, got string"),
    (doc(v=True), "v", "got boolean"),
    (doc(v=2), "v", "unsupported envelope version 2"),
    ({"v": 1}, "task", "is required"),
    (doc(task=5), "task", "must be a string, got integer"),
    (doc(task=None), "task", "got null"),
    (doc(task=""), "task", "must not be empty"),
    (doc(task="t" * 256), "task", "256 characters, longer than 255"),
    (doc(task="app tasks"), "task", "whitespace"),
    (doc(task="app\ttasks"), "task", "whitespace or control characters"),
    (doc(task="app\u2028tasks"), "task", "at index 3"),
    (doc(task="app\u00a0tasks"), "task", "whitespace"),
    (doc(task="app\x00tasks"), "task", "'\\x00' at index 3"),
    (doc(task="app\x7ftasks"), "task", "control characters"),
    (doc(args={"a": 1}), "args", "must be an array, got object"),
    (doc(args="1,2"), "args", "got string"),
    (doc(args=None), "args", "got null"),
    (doc(kwargs=[1]), "kwargs", "must be an object, got array"),
    (doc(kwargs=None), "kwargs", "got null"),
    (doc(id=""), "id", "must not be empty"),
    (doc(id="i" * 256), "id", "longer than 255"),
    (doc(id="a\nb"), "id", "control characters"),
    (doc(id=42), "id", "must be a string, got integer"),
    (doc(id=None), "id", "got null"),
    (doc(eta=1714566600), "eta", "ISO-8601 date-time string, got integer"),
    (doc(eta="tomorrow"), "eta", "is not an ISO-8601 date-time: 'tomorrow'"),
    (doc(eta="2024-05-01T12:30:00Z\n"), "eta", "not an ISO-8601"),
    (doc(countdown="5"), "countdown", "number of seconds, got string"),
    (doc(countdown=True), "countdown", "got boolean"),
    (doc(countdown=-1), "countdown", ">= 0, got -1"),
    (doc(eta="2024-05-01T12:30:00Z", countdown=5), "countdown", "give eta or countdown"),
    (doc(expires="soon"), "expires", "not an ISO-8601 date-time"),
    (doc(expires=-0.5), "expires", ">= 0"),
    (doc(expires=False), "expires", "got boolean"),
    (doc(expires=[60]), "expires", "date-time string or seconds, got array"),
    (doc(priority=10), "priority", "between 0 and 9, got 10"),
    (doc(priority=-1), "priority", "between 0 and 9"),
    (doc(priority=True), "priority", "integer 0-9, got boolean"),
    (doc(priority="5"), "priority", "got string"),
    (doc(priority=5.5), "priority", "got number"),
    (doc(queue=""), "queue", "must not be empty"),
    (doc(queue="q" * 256), "queue", "longer than 255"),
    (doc(queue=5), "queue", "must be a string"),
    (doc(headers=["h"]), "headers", "must be an object, got array"),
    (doc(trace_id=5), "trace_id", "must be a string, got integer"),
    (doc(created_at=1714566600), "created_at", "must be a string"),
]


def reject(data: bytes | None, error: type[EnvelopeError], **kwargs: Any) -> EnvelopeError:
    with pytest.raises(error) as caught:
        Envelope.decode(data, **kwargs)
    return caught.value


# -- decode: the happy path ------------------------------------------------------------


@pytest.mark.parametrize("document", VALID_DOCS)
def test_valid_document_decodes(document: dict[str, Any]) -> None:
    envelope = Envelope.decode(raw(document))
    assert envelope.task == document["task"]
    assert envelope.args == tuple(document.get("args", ()))
    assert Envelope.decode(envelope.encode()) == envelope


def test_decode_normalises_times_and_defaults() -> None:
    envelope = Envelope.decode(raw(doc(eta="2024-05-01T12:30:00", expires="2024-05-01T13:00Z")))
    assert envelope.eta == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert envelope.expires == datetime(2024, 5, 1, 13, 0, tzinfo=UTC)
    assert (envelope.args, envelope.kwargs, envelope.headers) == ((), {}, {})
    assert envelope.id is None and envelope.v == 1


def test_decoded_defaults_are_not_shared() -> None:
    first = Envelope.decode(raw(doc()))
    second = Envelope.decode(raw(doc()))
    assert first.kwargs is not second.kwargs and first.headers is not second.headers


# -- decode: one test per error ----------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_no_value(value: bytes | None) -> None:
    error = reject(value, InvalidJson)
    assert error.field is None and error.reason == "record has no value"


def test_record_too_large() -> None:
    data = raw(doc(args=["x" * 100]))
    error = reject(data, RecordTooLarge, max_bytes=100)
    assert error.field is None
    assert f"{len(data)} bytes" in error.reason and "limit of 100" in error.reason
    assert Envelope.decode(data, max_bytes=len(data)).task == "app.tasks.add"


def test_size_is_checked_before_utf8() -> None:
    reject(b"\xff" * 2000, RecordTooLarge, max_bytes=1000)


def test_not_utf8() -> None:
    error = reject(b'{"v":1,"task":"caf\xe9"}', InvalidEncoding)
    assert error.field is None and "position 18" in error.reason and "0xe9" in error.reason


@pytest.mark.parametrize(
    ("data", "piece"),
    [
        (b'{"v":1,', "line 1 column 8"),
        (b'{"v":1,\n"task":}', "line 2 column 8"),
        (b'{"v":1,"task":"t"} {}', "Extra data"),
        (b"   ", "Expecting value"),
        (b"{'v':1}", "double quotes"),
        (b'{"v":1,"task":"a\x00b"}', "Invalid control character"),
        ('\ufeff{"v":1,"task":"t"}'.encode(), "byte order mark"),
    ],
)
def test_invalid_json(data: bytes, piece: str) -> None:
    error = reject(data, InvalidJson)
    assert error.field is None and piece in error.reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constants(constant: str) -> None:
    error = reject(f'{{"v":1,"task":"t","args":[{constant}]}}'.encode(), InvalidJson)
    assert f"{constant} is not JSON" in error.reason


def test_float_out_of_range() -> None:
    error = reject(b'{"v":1,"task":"t","countdown":1e400}', InvalidJson)
    assert "1e400 is out of range" in error.reason


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b'{"v":1,"task":"a","task":"b"}', "'task'"),
        (b'{"v":1,"task":"t","kwargs":{"x":[{"k":1,"k":2}]}}', "'k'"),
    ],
)
def test_duplicate_keys(data: bytes, key: str) -> None:
    error = reject(data, InvalidJson)
    assert error.reason == f"duplicate key {key}"


def test_huge_integer() -> None:
    error = reject(b'{"v":1,"task":"t","args":[' + b"1" * 5000 + b"]}", InvalidJson)
    assert "64 bits" in error.reason


@pytest.mark.timeout(5)
@pytest.mark.parametrize("tail", [b"", b"]" * 10_000])
def test_very_deep_nesting_is_rejected_fast(tail: bytes) -> None:
    data = b'{"v":1,"task":"t","args":' + b"[" * 10_000 + tail + b"}"
    error = reject(data, InvalidJson)
    assert error.reason == "nesting deeper than 64"


def test_nesting_limit_is_exact() -> None:
    Envelope.decode(raw(doc(args=nested(MAX_DEPTH - 1))))
    Envelope.decode(raw(doc(kwargs={"k": nested(MAX_DEPTH - 2)})))
    error = reject(raw(doc(args=nested(MAX_DEPTH))), InvalidJson)
    assert error.reason == "nesting deeper than 64"
    # encode refuses exactly what decode would refuse
    Envelope(task="t", args=nested(MAX_DEPTH - 1)).encode()
    with pytest.raises(SchemaViolation):
        Envelope(task="t", args=nested(MAX_DEPTH)).encode()


def test_recursion_error_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the pre-scan, the json module's own recursion guard must still end in InvalidJson.
    monkeypatch.setattr(envelope_module, "MAX_DEPTH", 10**9)
    reject(b'{"v":1,"task":"t","args":' + b"[" * 100_000 + b"}", InvalidJson)


@pytest.mark.timeout(5)  # a quadratic scan would take minutes on this input
def test_nesting_scan_is_linear_on_hostile_strings() -> None:
    data = b'{"v":1,"task":"t","args":[' + b"[]," * 70 + b'"' + b'\\"' * 200_000
    reject(data, InvalidJson)


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("unpickled")
    return "x"


class _Booby:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record_unpickling, ())


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_is_rejected_and_never_unpickled(protocol: int) -> None:
    for payload in (pickle.dumps({"task": "x"}, protocol), pickle.dumps(_Booby(), protocol)):
        with pytest.raises((InvalidEncoding, InvalidJson)):
            Envelope.decode(payload)
    assert _UNPICKLED == []


@pytest.mark.parametrize(("document", "field", "piece"), INVALID_DOCS)
def test_schema_violation(document: Any, field: str | None, piece: str) -> None:
    error = reject(raw(document), SchemaViolation)
    assert error.field == field
    assert piece in error.reason


def test_nul_byte_in_task_name() -> None:
    error = reject(b'{"v":1,"task":"app\\u0000evil"}', SchemaViolation)
    assert error.field == "task" and "control characters" in error.reason


def test_every_whitespace_character_is_refused_in_task() -> None:
    for code in range(0x3001):
        char = chr(code)
        if char.isspace() or code < 0x20 or 0x7F <= code <= 0x9F:
            with pytest.raises(SchemaViolation):
                Envelope(task=f"a{char}b")


def test_version_is_checked_before_unknown_fields() -> None:
    error = reject(raw({"v": 2, "task": "t", "new_field": 1}), SchemaViolation)
    assert error.field == "v"


def test_unknown_field_is_named_in_document_order() -> None:
    error = reject(b'{"v":1,"task":"t","zeta":1,"alpha":2}', SchemaViolation)
    assert error.field == "zeta"


@pytest.mark.parametrize(
    ("document", "field"),
    [(doc(v=1.0), "v"), (doc(priority=5.0), "priority"), (doc(eta="2024-13-01"), "eta")],
)
def test_python_is_stricter_than_the_schema(document: dict[str, Any], field: str) -> None:
    # JSON Schema counts 1.0 as an integer and cannot check calendar ranges by pattern;
    # both limits are spelled out in the schema's description.
    assert VALIDATOR.is_valid(document)
    assert reject(raw(document), SchemaViolation).field == field


# -- construction and encode ---------------------------------------------------------------


def test_constructor_normalises() -> None:
    envelope = Envelope(
        task="t",
        args=[1, 2],  # type: ignore[arg-type]
        kwargs=MappingProxyType({"a": 1}),
        eta=datetime(2024, 5, 1, 12, 30),
        expires=datetime(2024, 5, 1, 13, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    assert envelope.args == (1, 2)
    assert type(envelope.kwargs) is dict
    assert envelope.eta == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert isinstance(envelope.expires, datetime)
    assert envelope.expires.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("fields", "field", "piece"),
    [
        ({"task": ""}, "task", "empty"),
        ({"task": "a b"}, "task", "whitespace"),
        ({"task": "t", "v": 2}, "v", "unsupported envelope version 2"),
        ({"task": "t", "args": "ab"}, "args", "array"),
        ({"task": "t", "kwargs": {1: "x"}}, "kwargs", "keys must be strings"),
        ({"task": "t", "eta": "2024-05-01T12:30:00Z"}, "eta", "must be a datetime"),
        ({"task": "t", "countdown": float("nan")}, "countdown", "finite"),
        ({"task": "t", "countdown": float("inf")}, "countdown", "finite"),
        ({"task": "t", "countdown": 1e12}, "countdown", "<= 315360000"),
        ({"task": "t", "expires": 1e12}, "expires", "<= 315360000"),
        ({"task": "t", "countdown": 1, "eta": datetime(2024, 1, 1)}, "countdown", "not both"),
        ({"task": "t", "expires": "2024-05-01"}, "expires", "must be a datetime"),
        ({"task": "t", "priority": 10}, "priority", "between 0 and 9"),
        ({"task": "t", "headers": ["h"]}, "headers", "object"),
        ({"task": "t", "trace_id": 1}, "trace_id", "string"),
    ],
)
def test_constructor_validates(fields: dict[str, Any], field: str, piece: str) -> None:
    with pytest.raises(SchemaViolation) as caught:
        Envelope(**fields)
    assert caught.value.field == field and piece in caught.value.reason


def test_encode_is_compact_and_omits_empty_fields() -> None:
    envelope = Envelope(task="app.add", args=(1, "é"), eta=datetime(2024, 5, 1, 12, 30))
    assert envelope.encode() == (
        b'{"v":1,"task":"app.add","args":[1,"\xc3\xa9"],"kwargs":{},'
        b'"eta":"2024-05-01T12:30:00+00:00"}'
    )
    full = Envelope(
        task="t",
        id="i",
        countdown=1.5,
        expires=30,
        priority=3,
        queue="q",
        headers={"h": 1},
        trace_id="tr",
        created_at="c",
    )
    assert json.loads(full.encode()) == {
        "v": 1,
        "task": "t",
        "args": [],
        "kwargs": {},
        "id": "i",
        "countdown": 1.5,
        "expires": 30,
        "priority": 3,
        "queue": "q",
        "headers": {"h": 1},
        "trace_id": "tr",
        "created_at": "c",
    }


@pytest.mark.parametrize(
    ("fields", "field", "piece"),
    [
        ({"args": (datetime(2024, 1, 1),)}, "args", "args[0] is a datetime, which is not JSON"),
        ({"kwargs": {"s": {1, 2}}}, "kwargs", "kwargs['s'] is a set"),
        ({"headers": {"o": [object()]}}, "headers", "headers['o'][0] is a object"),
        ({"args": ({1: "x"},)}, "args", "has a int key 1"),
        ({"args": (float("nan"),)}, "args", "nan"),
        ({"args": (b"bytes",)}, "args", "bytes"),
        ({"args": (nested(MAX_DEPTH - 1),)}, "args", "nests deeper than 64"),
    ],
)
def test_encode_rejects_values_json_cannot_hold(
    fields: dict[str, Any], field: str, piece: str
) -> None:
    envelope = Envelope(task="t", **fields)
    with pytest.raises(SchemaViolation) as caught:
        envelope.encode()
    assert caught.value.field == field and piece in caught.value.reason


def test_a_lone_surrogate_escape_is_not_text_and_is_refused() -> None:
    reject(b'{"v":1,"task":"t","args":["\\ud800"]}', InvalidEncoding)
    with pytest.raises(SchemaViolation, match="surrogate"):
        Envelope(task="t", args=("\ud800",)).encode()
    pair = Envelope(task="t", args=("\U0001f600",))  # escaped as a surrogate pair: fine
    assert Envelope.decode(pair.encode()) == pair


# -- round trip ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
names = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="\ufeff"),
    min_size=1,
    max_size=255,
)
ids = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=255)
zones = (
    st.none()
    | st.just(UTC)
    | st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
)
moments = st.datetimes(timezones=zones)
seconds = st.integers(min_value=0, max_value=MAX_SECONDS) | st.floats(
    min_value=0, max_value=MAX_SECONDS
)
when = (
    st.tuples(st.none(), st.none()) | st.tuples(moments, st.none()) | st.tuples(st.none(), seconds)
)


def check_round_trip(envelope: Envelope) -> None:
    data = envelope.encode()
    decoded = Envelope.decode(data)
    assert decoded == envelope
    assert decoded.encode() == data
    assert VALIDATOR.is_valid(json.loads(data))


@settings(max_examples=30, database=None)
@given(
    args=st.lists(json_values, max_size=3),  # a list on purpose: construction makes it a tuple
    kwargs=json_objects,
    headers=json_objects,
)
def test_round_trip_of_payloads(
    args: list[Any], kwargs: dict[str, Any], headers: dict[str, Any]
) -> None:
    check_round_trip(Envelope(task="t", args=args, kwargs=kwargs, headers=headers))  # type: ignore[arg-type]


@settings(max_examples=75, database=None)
@given(
    task=names,
    id=st.none() | ids,
    when=when,
    expires=st.none() | moments | seconds,
    priority=st.none() | st.integers(0, 9),
    queue=st.none() | ids,
    trace_id=st.none() | st.text(max_size=20),
    created_at=st.none() | st.text(max_size=20),
)
def test_round_trip_of_fields(when: tuple[datetime | None, float | None], **fields: Any) -> None:
    check_round_trip(Envelope(eta=when[0], countdown=when[1], **fields))


# -- the shipped JSON schema ---------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(envelope_module._FIELDS)
    assert SCHEMA_PATH.is_file()
    schema["mutated"] = True
    assert "mutated" not in json_schema()


@pytest.mark.parametrize("document", VALID_DOCS)
def test_schema_accepts_every_valid_document(document: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors(document)) == []


@pytest.mark.parametrize(("document", "field", "piece"), INVALID_DOCS)
def test_schema_rejects_every_invalid_document(document: Any, field: str, piece: str) -> None:
    assert not VALIDATOR.is_valid(document)


def test_schema_character_rules_match_the_decoder() -> None:
    every_char = "".join(map(chr, range(0x10000)))
    properties = json_schema()["properties"]
    for name, ours in (("task", envelope_module._TASK_BAD), ("id", envelope_module._ID_BAD)):
        theirs = re.compile(properties[name]["not"]["pattern"])
        assert set(theirs.findall(every_char)) == set(ours.findall(every_char))


POOLS: dict[str, list[Any]] = {
    "v": [1, 1, 1, 2, "1", True, None],
    "task": ["app.t", "app.t", "", "a b", "a\x00b", "x" * 256, 5, None],
    "args": [[], [1, {"a": None}], {}, "x", None],
    "kwargs": [{}, {"a": [1]}, [], None],
    "id": ["k", "with space", "", "a\nb", "i" * 256, 7, None],
    "eta": ["2024-05-01T12:30:00Z", "2024-05-01", "2024-05-01 12:30:00.5+02:00", "soon", 5],
    "countdown": [0, 1.5, -1, "5", True, None],
    "expires": [0, 60, -0.5, "2024-05-01T12:30:00+00:00", "later", False, None],
    "priority": [0, 9, 10, -1, True, "5", 5.5, None],
    "queue": ["q", "", "q" * 256, 5, None],
    "headers": [{}, {"h": 1}, [], None],
    "trace_id": ["", "t", 5, None],
    "created_at": ["2024", 1, None],
    "unknown": [1],
}
candidates = st.fixed_dictionaries(
    {}, optional={name: st.sampled_from(pool) for name, pool in POOLS.items()}
)


@settings(max_examples=150, database=None)
@given(candidates)
def test_schema_and_decoder_agree(document: dict[str, Any]) -> None:
    try:
        Envelope.decode(raw(document))
        decoded = True
    except SchemaViolation:
        decoded = False
    assert VALIDATOR.is_valid(document) == decoded


# -- task ids ------------------------------------------------------------------------------


def test_derive_task_id_is_a_deterministic_uuid5() -> None:
    first = derive_task_id("tasks", 3, 1234)
    assert first == derive_task_id("tasks", 3, 1234)
    assert uuid.UUID(first).version == 5
    assert first == str(uuid.uuid5(TASK_ID_NAMESPACE, "tasks/3/1234"))
    others = {derive_task_id("tasks", 3, 1235), derive_task_id("tasks", 4, 1234)}
    others.add(derive_task_id("other", 3, 1234))
    # Same place, another incarnation of the topic (a new timestamp): a new id.
    assert derive_task_id("tasks", 3, 1234, 1_700_000_000_000) != first
    assert derive_task_id("tasks", 3, 1234, -1) == first
    assert first not in others and len(others) == 3


def test_task_id_for_prefers_the_envelope_id() -> None:
    assert task_id_for(Envelope(task="t", id="mine"), "tasks", 0, 7) == "mine"
    assert task_id_for(Envelope(task="t"), "tasks", 0, 7) == derive_task_id("tasks", 0, 7)


@given(st.integers(max_value=INT_MIN - 1) | st.integers(min_value=INT_MAX + 1))
def test_integers_beyond_64_bits_are_refused_on_both_sides(n: int) -> None:
    with pytest.raises(SchemaViolation, match="64 bits"):
        Envelope(task="t", args=(n,)).encode()
    reject(b'{"v":1,"task":"t","args":[' + str(n).encode() + b"]}", InvalidJson)
