"""A corpus of hostile Kafka records, each with the DLQ error class the bridge must give it.

Every record here must end in the DLQ (stage ``bridge``) and never reach Celery. Labels
are ``category/variant``; the category is what the issue lists (truncated JSON, invalid
UTF-8, 10 MB value, deep nesting, pickle, task off the allow-list, wrong types, huge
integers, NaN, duplicate keys, NUL bytes, header floods) plus a few neighbours.

The expected classes follow the decode order of ``docs/envelope.md``: size, then UTF-8,
then depth and BOM, then strict JSON, then the schema, then the bridge's allow-list.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafcel.protocol.envelope import DEFAULT_MAX_BYTES, Envelope

__all__ = [
    "CANARY",
    "DENY",
    "HOSTILE_LEDGER",
    "MAX_RECORD_BYTES",
    "REGISTERED_TASK",
    "Hostile",
    "corpus",
]

MAX_RECORD_BYTES = DEFAULT_MAX_BYTES
"""The bridge runs with its default limit, so the corpus tests the limit users get."""

REGISTERED_TASK = "tests.app.record"
DENY = ("tests.app.slow", "tests.app.flaky_*")
"""Deny patterns the bridge runs with: registered tasks that must still be refused."""

HOSTILE_LEDGER = "kafcel:test:hostile"
"""Ledger name in the args of records that would run ``tests.app`` tasks if let through:
a hostile record that reaches a task body leaves a trace under this name in Redis."""
_L = json.dumps(HOSTILE_LEDGER)

CANARY = Path(tempfile.gettempdir()) / f"PWNED-{uuid.uuid4().hex}"
"""Created by unpickling any of the side-effect pickles: it must never exist."""

INVALID_JSON = "InvalidJson"
INVALID_ENCODING = "InvalidEncoding"
TOO_LARGE = "RecordTooLarge"
SCHEMA = "SchemaViolation"
NOT_ALLOWED = "TaskNotAllowed"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Hostile:
    label: str
    value: bytes | None  # None is a tombstone (a record with no value at all)
    headers: Headers | None
    expected_error: str


# -- helpers ---------------------------------------------------------------------------


def _envelope(extra: str = "", task: str = REGISTERED_TASK) -> bytes:
    """``{"v":1,"task":...}`` plus ``extra`` (raw JSON text starting with a comma)."""
    return ('{"v":1,"task":' + json.dumps(task) + extra + "}").encode("utf-8")


def _text_or_binary(value: bytes) -> str:
    # UTF-8 is checked before JSON, so bytes that happen to be valid UTF-8 (protocol 0
    # pickles, most cuts of an envelope) are refused as JSON, the rest as encoding.
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_ENCODING
    return INVALID_JSON


class _Canary:
    """Unpickling this opens (creates) :data:`CANARY`: proof that someone unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.path, "w"))


# -- categories ------------------------------------------------------------------------


def _truncated() -> list[Hostile]:
    full = json.dumps(
        {
            "v": 1,
            "task": REGISTERED_TASK,
            "args": [HOSTILE_LEDGER, "€ and 😀"],
            "kwargs": {},
            "id": "truncated-ünïcødé",
            "priority": 5,
            "headers": {"tenant": "acme"},
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    euro = full.index("€".encode())
    emoji = full.index("😀".encode())
    # Every 9th byte, the last byte, and cuts inside 3- and 4-byte characters.
    cuts = sorted({*range(1, len(full), 9), len(full) - 1, euro + 1, euro + 2, emoji + 3})
    out = [Hostile(f"truncated/at-{k}", full[:k], None, _text_or_binary(full[:k])) for k in cuts]
    out.append(
        Hostile(
            "truncated/unterminated-escapes",
            b'{"v":1,"task":"' + b'\\"' * 200_000,
            None,
            INVALID_JSON,
        )
    )
    out.append(Hostile("truncated/open-string-key", b'{"v":1,"ta', None, INVALID_JSON))
    return out


def _invalid_utf8() -> list[Hostile]:
    bad = {
        "lone-continuation-0x80": b"\x80",
        "byte-0xff": b"\xff",
        "byte-0xfe": b"\xfe",
        "latin1-e-acute": b"\xe9",
        "overlong-slash-2-bytes": b"\xc0\xaf",
        "overlong-nul-modified-utf8": b"\xc0\x80",
        "overlong-slash-3-bytes": b"\xe0\x80\xaf",
        "overlong-slash-4-bytes": b"\xf0\x80\x80\xaf",
        "surrogate-d800-encoded": b"\xed\xa0\x80",
        "surrogate-dfff-encoded": b"\xed\xbf\xbf",
        "cesu8-surrogate-pair": b"\xed\xa0\xbd\xed\xb8\x80",
        "above-u10ffff": b"\xf4\x90\x80\x80",
        "byte-0xf5": b"\xf5\x80\x80\x80",
        "truncated-3-byte": b"\xe2\x82",
    }
    out = [
        Hostile(
            f"utf8/{name}-in-task",
            _envelope(task="tests.app.rec").replace(b'rec"', b"rec" + raw + b'"'),
            None,
            INVALID_ENCODING,
        )
        for name, raw in bad.items()
    ]
    out += [
        Hostile(
            "utf8/in-args-string",
            b'{"v":1,"task":"tests.app.record","args":["a\xffb"]}',
            None,
            INVALID_ENCODING,
        ),
        Hostile(
            "utf8/in-key",
            b'{"v":1,"task":"tests.app.record","kw\xc3args":{}}',
            None,
            INVALID_ENCODING,
        ),
        Hostile("utf8/truncated-at-end", _envelope() + b"\xe2\x82", None, INVALID_ENCODING),
        Hostile(
            "utf8/utf16-le-with-bom",
            b"\xff\xfe" + _envelope().decode().encode("utf-16-le"),
            None,
            INVALID_ENCODING,
        ),
        Hostile(
            "utf8/utf16-be-with-bom",
            b"\xfe\xff" + _envelope().decode().encode("utf-16-be"),
            None,
            INVALID_ENCODING,
        ),
        # Without a BOM, UTF-16 of ASCII is valid UTF-8 full of NULs: refused as JSON.
        Hostile(
            "utf8/utf16-le-no-bom", _envelope().decode().encode("utf-16-le"), None, INVALID_JSON
        ),
        Hostile(
            "utf8/utf32-le-no-bom", _envelope().decode().encode("utf-32-le"), None, INVALID_JSON
        ),
        Hostile("utf8/utf8-bom-then-envelope", b"\xef\xbb\xbf" + _envelope(), None, INVALID_JSON),
        # A JSON escape of a lone surrogate is valid JSON text but no Unicode string.
        Hostile(
            "utf8/escaped-lone-surrogate-in-args",
            _envelope(f',"args":[{_L},"\\ud800"]'),
            None,
            INVALID_ENCODING,
        ),
        Hostile(
            "utf8/escaped-lone-surrogate-in-kwargs",
            _envelope(f',"args":[{_L}],"kwargs":{{"item":"x\\udfff"}}'),
            None,
            INVALID_ENCODING,
        ),
    ]
    return out


def _too_large() -> list[Hostile]:
    shell = len(_envelope(',"args":[""]'))
    ten_mb = 10 * 1024 * 1024
    return [
        Hostile(
            "too-large/10MB-envelope",
            _envelope(',"args":["' + "x" * (ten_mb - shell) + '"]'),
            None,
            TOO_LARGE,
        ),
        # Size comes before UTF-8: 10 MB of garbage must not be decoded at all.
        Hostile("too-large/10MB-of-0xff", b"\xff" * ten_mb, None, TOO_LARGE),
        Hostile(
            "too-large/limit-plus-one",
            _envelope(',"args":["' + "x" * (MAX_RECORD_BYTES + 1 - shell) + '"]'),
            None,
            TOO_LARGE,
        ),
        Hostile("too-large/2MB-of-brackets", b"[" * (2 * 1024 * 1024), None, TOO_LARGE),
    ]


def _deep(n: int, open_: str = "[", close: str = "]", inner: str = "") -> str:
    return open_ * n + inner + close * n


def _nesting() -> list[Hostile]:
    n = 10_000
    return [
        Hostile(
            "nesting/10000-arrays-in-args",
            _envelope(',"args":[' + _deep(n) + "]"),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "nesting/10000-objects-in-kwargs",
            _envelope(',"kwargs":' + _deep(n, '{"a":', "}", "1")),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "nesting/10000-objects-in-headers",
            _envelope(',"headers":' + _deep(n, '{"h":', "}", "1")),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "nesting/10000-mixed-in-args",
            _envelope(',"args":' + _deep(n // 2, '[{"a":', "}]", "1")),
            None,
            INVALID_JSON,
        ),
        Hostile("nesting/10000-top-level-array", _deep(n).encode(), None, INVALID_JSON),
        Hostile(
            "nesting/10000-unbalanced-opens",
            _envelope(',"args":' + "[" * n).rstrip(b"}"),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "nesting/500000-arrays-in-args",
            _envelope(',"args":[' + _deep(500_000) + "]"),
            None,
            INVALID_JSON,
        ),
        Hostile("nesting/65-levels", _envelope(',"args":' + _deep(64)), None, INVALID_JSON),
        # Closing brackets inside a string must not cancel the real nesting that follows.
        Hostile(
            "nesting/10000-behind-string-brackets",
            _envelope(',"args":["' + "]" * n + '\\"]]",' + _deep(n) + "]"),
            None,
            INVALID_JSON,
        ),
    ]


def _pickles(canary: Path) -> list[Hostile]:
    objects: dict[str, Any] = {
        "envelope-dict": {"v": 1, "task": REGISTERED_TASK, "args": ["pickled", 1]},
        "envelope-object": Envelope(task=REGISTERED_TASK, args=("pickled", 2)),
        "side-effect": _Canary(canary),
    }
    out = []
    for name, obj in objects.items():
        for protocol in range(6):
            raw = pickle.dumps(obj, protocol=protocol)
            out.append(
                Hostile(f"pickle/{name}-protocol-{protocol}", raw, None, _text_or_binary(raw))
            )
    # A header claiming Celery's pickle content type changes nothing: the bridge only
    # ever reads JSON.
    raw = pickle.dumps(_Canary(canary), protocol=pickle.HIGHEST_PROTOCOL)
    claim = [("content-type", b"application/x-python-serialize"), ("content-encoding", b"binary")]
    out.append(Hostile("pickle/side-effect-with-pickle-content-type", raw, claim, INVALID_ENCODING))
    return out


def _tasks() -> list[Hostile]:
    not_allowed = {
        "unknown": "tests.app.nope",
        "denied-exact": "tests.app.slow",
        "denied-by-glob": "tests.app.flaky_bind",
        "celery-backend-cleanup": "celery.backend_cleanup",
        "celery-chord-unlock": "celery.chord_unlock",
        "celery-chain": "celery.chain",
        "celery-group": "celery.group",
        "celery-starmap": "celery.starmap",
        "celery-accumulate": "celery.accumulate",
        "path-dotdot": "tests.app.record/../slow",
        "path-leading-dotdot": "../tests.app.record",
        "path-slashes": "tests/app/record",
        "trailing-dot": "tests.app.record.",
        "double-dot": "tests..app.record",
        "glob-star": "tests.app.*",
        "glob-class": "tests.app.[rs]ecord",
        "case-changed": "Tests.App.Record",
        "denied-case-changed": "tests.app.SLOW",
        "prefix-of-registered": "tests.app.recor",
        "zero-width-space": "tests.app.record\u200b",
        "cyrillic-homoglyph": "tests.app.r\u0435cord",
        "fullwidth": "\uff54ests.app.record",
        "os-system": "os.system",
        "builtins-eval": "builtins.eval",
        "dunder-import": "__import__",
    }
    out = [
        Hostile(f"task/{name}", _envelope(f',"args":[{_L},"x"]', task=task), None, NOT_ALLOWED)
        for name, task in not_allowed.items()
    ]
    bad_names = {
        "trailing-space": '"tests.app.record "',
        "newline": '"tests.app.record\\n"',
        "line-separator": '"tests.app.record\\u2028"',
        "leading-bom": '"\\ufefftests.app.record"',
        "empty": '""',
        "256-chars": json.dumps("t" * 256),
        "not-a-string": "42",
        "array": '["tests.app.record"]',
        "null": "null",
    }
    out += [
        Hostile(f"task/{name}", ('{"v":1,"task":' + raw + "}").encode(), None, SCHEMA)
        for name, raw in bad_names.items()
    ]
    out.append(Hostile("task/missing", b'{"v":1,"args":[]}', None, SCHEMA))
    return out


def _wrong_types() -> list[Hostile]:
    fields = {
        "args-string": ',"args":"hostile"',
        "args-object": ',"args":{"0":"hostile"}',
        "args-number": ',"args":1',
        "args-null": ',"args":null',
        "args-true": ',"args":true',
        "kwargs-array": ',"kwargs":["hostile"]',
        "kwargs-string": ',"kwargs":"name=hostile"',
        "kwargs-null": ',"kwargs":null',
        "countdown-string": ',"countdown":"10"',
        "countdown-bool": ',"countdown":true',
        "countdown-negative": ',"countdown":-1',
        "countdown-over-ten-years": ',"countdown":315360001',
        "priority-string": ',"priority":"5"',
        "priority-float": ',"priority":5.0',
        "priority-bool": ',"priority":true',
        "priority-10": ',"priority":10',
        "priority-negative": ',"priority":-1',
        "id-number": ',"id":123',
        "id-array": ',"id":["a"]',
        "id-empty": ',"id":""',
        "id-256-chars": ',"id":' + json.dumps("i" * 256),
        "eta-number": ',"eta":1714564800',
        "eta-words": ',"eta":"tomorrow"',
        "eta-month-13": ',"eta":"2024-13-01T00:00:00"',
        "eta-and-countdown": ',"eta":"2024-05-01T12:00:00Z","countdown":5',
        "expires-bool": ',"expires":false',
        "expires-array": ',"expires":[]',
        "expires-negative": ',"expires":-5',
        "queue-number": ',"queue":7',
        "queue-empty": ',"queue":""',
        "headers-array": ',"headers":["tenant"]',
        "trace-id-number": ',"trace_id":1',
        "created-at-object": ',"created_at":{}',
        "unknown-field": ',"callback":"os.system"',
        "celery-field-smuggled": ',"serializer":"pickle"',
    }
    return [
        Hostile(f"types/{name}", _envelope(extra), None, SCHEMA) for name, extra in fields.items()
    ]


def _versions() -> list[Hostile]:
    raw = {
        "missing": '{"task":"tests.app.record"}',
        "string": '{"v":"1","task":"tests.app.record"}',
        "float": '{"v":1.0,"task":"tests.app.record"}',
        "bool": '{"v":true,"task":"tests.app.record"}',
        "two": '{"v":2,"task":"tests.app.record","new_field":1}',
        "zero": '{"v":0,"task":"tests.app.record"}',
        "null": '{"v":null,"task":"tests.app.record"}',
        "array": '{"v":[1],"task":"tests.app.record"}',
    }
    return [Hostile(f"version/{name}", text.encode(), None, SCHEMA) for name, text in raw.items()]


def _huge_ints() -> list[Hostile]:
    huge = str(10**400)
    return [
        Hostile(
            "huge-int/4301-digits-in-args",
            _envelope(',"args":[' + "9" * 4301 + "]"),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "huge-int/100000-digits-in-kwargs",
            _envelope(',"kwargs":{"n":' + "9" * 100_000 + "}"),
            None,
            INVALID_JSON,
        ),
        Hostile("huge-int/float-1e400-in-args", _envelope(',"args":[1e400]'), None, INVALID_JSON),
        Hostile(
            "huge-int/float-minus-1e400-in-kwargs",
            _envelope(',"kwargs":{"n":-1e400}'),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "huge-int/v-10e400",
            ('{"v":' + huge + ',"task":"tests.app.record"}').encode(),
            None,
            INVALID_JSON,
        ),
        Hostile("huge-int/priority-10e400", _envelope(',"priority":' + huge), None, INVALID_JSON),
        Hostile("huge-int/countdown-10e400", _envelope(',"countdown":' + huge), None, INVALID_JSON),
        Hostile(
            "huge-int/expires-minus-10e400", _envelope(',"expires":-' + huge), None, INVALID_JSON
        ),
        Hostile("huge-int/id-10e400", _envelope(',"id":' + huge), None, INVALID_JSON),
        # Python would hold 10**400, but Go, Java and JavaScript consumers of the results
        # topic cannot: integers are bounded to 64 bits.
        Hostile(
            "huge-int/10e400-in-args",
            _envelope(f',"args":[{_L},{huge}]'),
            None,
            INVALID_JSON,
        ),
        Hostile(
            "huge-int/minus-10e400-in-kwargs",
            _envelope(f',"args":[{_L}],"kwargs":{{"item":-{huge}}}'),
            None,
            INVALID_JSON,
        ),
    ]


def _nan() -> list[Hostile]:
    raw = {
        "nan-in-args": ',"args":[NaN]',
        "infinity-in-args": ',"args":[Infinity]',
        "minus-infinity-in-args": ',"args":[-Infinity]',
        "nan-in-kwargs": ',"kwargs":{"x":NaN}',
        "nan-countdown": ',"countdown":NaN',
        "infinity-expires": ',"expires":Infinity',
        "infinity-priority": ',"priority":Infinity',
        "nan-in-headers": ',"headers":{"x":[NaN]}',
        "lowercase-nan": ',"args":[nan]',
    }
    out = [
        Hostile(f"nan/{name}", _envelope(extra), None, INVALID_JSON) for name, extra in raw.items()
    ]
    out.append(Hostile("nan/top-level", b"NaN", None, INVALID_JSON))
    return out


def _duplicate_keys() -> list[Hostile]:
    raw = {
        "task": '{"v":1,"task":"tests.app.record","task":"tests.app.slow"}',
        "task-same-value": '{"v":1,"task":"tests.app.record","task":"tests.app.record"}',
        "v": '{"v":1,"v":2,"task":"tests.app.record"}',
        "args": '{"v":1,"task":"tests.app.record","args":[],"args":[' + _L + ",1]}",
        "task-escaped": '{"v":1,"task":"tests.app.record","t\\u0061sk":"tests.app.slow"}',
        "in-kwargs": '{"v":1,"task":"tests.app.record","kwargs":{"item":1,"item":2}}',
        "in-headers": '{"v":1,"task":"tests.app.record","headers":{"t":"a","t":"b"}}',
        "deep-in-args": '{"v":1,"task":"tests.app.record","args":[[[{"a":{"b":1,"b":2}}]]]}',
    }
    return [
        Hostile(f"duplicate-key/{name}", t.encode(), None, INVALID_JSON) for name, t in raw.items()
    ]


def _nul_bytes() -> list[Hostile]:
    return [
        Hostile("nul/whole-value", b"\x00", None, INVALID_JSON),
        Hostile("nul/1000-nuls", b"\x00" * 1000, None, INVALID_JSON),
        Hostile("nul/raw-in-task", b'{"v":1,"task":"tests.app.rec\x00ord"}', None, INVALID_JSON),
        Hostile(
            "nul/raw-in-key", b'{"v":1,"task":"tests.app.record","ar\x00gs":[]}', None, INVALID_JSON
        ),
        Hostile("nul/raw-after-object", _envelope() + b"\x00", None, INVALID_JSON),
        Hostile("nul/raw-before-object", b"\x00" + _envelope(), None, INVALID_JSON),
        Hostile("nul/escaped-in-task", _envelope(task="tests.app.record\x00"), None, SCHEMA),
        Hostile("nul/escaped-task-prefix", _envelope(task="\x00tests.app.record"), None, SCHEMA),
        Hostile(
            "nul/escaped-in-field-name",
            b'{"v":1,"task":"tests.app.record","args\\u0000":[]}',
            None,
            SCHEMA,
        ),
        Hostile("nul/escaped-in-id", _envelope(',"id":"order\\u00001"'), None, SCHEMA),
    ]


def _empty_and_top_level() -> list[Hostile]:
    valid = _envelope(f',"args":[{_L},"x"]').decode()
    empty = {
        "tombstone": None,
        "zero-bytes": b"",
        "one-space": b" ",
        "whitespace": b" \t\r\n ",
        "vertical-tab-form-feed": b"\x0b\x0c",
        "nbsp": "\u00a0".encode(),
        "bom-only": b"\xef\xbb\xbf",
    }
    out = [Hostile(f"empty/{name}", value, None, INVALID_JSON) for name, value in empty.items()]
    top = {
        "empty-array": ("[]", SCHEMA),
        "array-of-envelope": (f"[{valid}]", SCHEMA),
        "string": ('"tests.app.record"', SCHEMA),
        "number": ("42", SCHEMA),
        "true": ("true", SCHEMA),
        "null": ("null", SCHEMA),
        "empty-object": ("{}", SCHEMA),
        "two-envelopes": (valid + valid, INVALID_JSON),
        "json-lines": (valid + "\n" + valid, INVALID_JSON),
        "single-quotes": (valid.replace('"', "'"), INVALID_JSON),
        "trailing-comma": (valid[:-1] + ",}", INVALID_JSON),
        "comment": ("// hi\n" + valid, INVALID_JSON),
    }
    out += [Hostile(f"top-level/{name}", t.encode(), None, cls) for name, (t, cls) in top.items()]
    return out


def _header_floods() -> list[Hostile]:
    many: Headers = [(f"h{i}", f"value-{i}".encode()) for i in range(5000)]
    same_name: Headers = [("x", b"y")] * 5000
    binary: Headers = [(f"b{i}", bytes([0xFF, 0x00, i % 256])) for i in range(5000)]
    # Claims the record was already judged fine; the bridge must write its own verdict.
    spoofed: Headers = [("kafcel.error.class", b"Fine"), ("kafcel.stage", b"worker")] * 2500
    # 5,000 headers of 300 bytes: 1.5 MB of headers, more than a DLQ record may hold.
    heavy: Headers = [(f"h{i}", b"v" * 300) for i in range(5000)]
    # 40,000 keys in the envelope's own headers field, under the size limit.
    field_flood = ',"headers":{' + ",".join(f'"h{i}":{i}' for i in range(40_000)) + "}"
    unknown = _envelope(f',"args":[{_L},"x"]', task="tests.app.nope")
    return [
        Hostile("header-flood/5000-on-unknown-task", unknown, many, NOT_ALLOWED),
        Hostile(
            "header-flood/5000-same-name-on-truncated-json",
            b'{"v":1,"task":',
            same_name,
            INVALID_JSON,
        ),
        Hostile(
            "header-flood/5000-binary-on-pickle",
            pickle.dumps({"task": "x"}, 5),
            binary,
            INVALID_ENCODING,
        ),
        Hostile(
            "header-flood/5000-spoofed-kafcel-headers", _envelope(',"args":"x"'), spoofed, SCHEMA
        ),
        Hostile(
            "header-flood/1.5MB-of-headers-on-denied-task",
            _envelope(f',"args":[{_L},1,0]', task="tests.app.slow"),
            heavy,
            NOT_ALLOWED,
        ),
        Hostile(
            "header-flood/40000-keys-in-envelope-headers-denied",
            _envelope(field_flood, task="tests.app.slow"),
            None,
            NOT_ALLOWED,
        ),
        Hostile(
            "header-flood/40000-keys-in-envelope-headers-one-duplicate",
            _envelope(field_flood[:-1] + ',"h7":7}'),
            None,
            INVALID_JSON,
        ),
    ]


def corpus(canary: Path = CANARY) -> list[Hostile]:
    """Every hostile record, in a stable order; labels are unique."""
    records = [
        *_truncated(),
        *_invalid_utf8(),
        *_too_large(),
        *_nesting(),
        *_pickles(canary),
        *_tasks(),
        *_wrong_types(),
        *_versions(),
        *_huge_ints(),
        *_nan(),
        *_duplicate_keys(),
        *_nul_bytes(),
        *_empty_and_top_level(),
        *_header_floods(),
    ]
    labels = [r.label for r in records]
    assert len(labels) == len(set(labels)), "corpus labels must be unique"
    return records
