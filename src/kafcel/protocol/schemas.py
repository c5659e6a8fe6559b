"""The JSON Schemas (draft 2020-12) kafcel ships in ``kafcel/schema/``: what a writer in
another language must produce (the envelope) and what a reader of kafcel's topics gets
(the outcome record, a dead letter's ``kafcel.*`` headers)."""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

__all__ = ["SCHEMAS", "load_schema", "schema_path"]

SCHEMAS = ("envelope", "outcome", "deadletter")


def schema_path(name: str) -> Traversable:
    """The shipped file of schema ``name`` (one of :data:`SCHEMAS`), version 1."""
    if name not in SCHEMAS:
        raise ValueError(f"no schema {name!r}: one of {', '.join(SCHEMAS)}")
    return files("kafcel") / "schema" / f"{name}-v1.json"


def load_schema(name: str) -> dict[str, Any]:
    """Schema ``name``, freshly loaded."""
    schema: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return schema
