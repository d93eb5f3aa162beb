"""Typed reads from a results file (metrics.json, decision.json) that name the file and the field.

`read_json_file(path)` decodes the file; `RecordFields(value, path)` then hands out its fields
with the type a record expects. A missing or mistyped field raises RecordError naming the file and
the dotted field (`tracks.structured.models.slm.latency_s.p50`), so a reader never meets a
KeyError deep in its own code. Values are returned as the file holds them (an int stays an int),
so a record written back with `to_json` gives the same JSON text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """A results file that does not hold the record it should; the message names the file and the field."""


def read_json_file(path: Path) -> Any:
    """The decoded file; RecordError `file:line: not valid JSON` when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None


def is_number(value: Any) -> bool:
    """A finite JSON number (not a bool, not NaN/Infinity, which Python's json lets through)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]


class RecordFields:
    """The fields of one JSON object inside `path`, found at the dotted `prefix` ("" for the top)."""

    def __init__(self, value: Any, path: Path | str, prefix: str = ""):
        if not isinstance(value, dict):
            where = f"field {prefix!r}" if prefix else "the file"
            raise RecordError(f"{path}: {where} must be a JSON object, got {shown(value)}")
        self.value, self.path, self.prefix = value, path, prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, expected: str) -> RecordError:
        return RecordError(f"{self.path}: field {self.name(key)!r} must be {expected}, got {shown(self.value[key])}")

    def raw(self, key: str) -> Any:
        if key not in self.value:
            raise RecordError(f"{self.path}: field {self.name(key)!r} missing")
        return self.value[key]

    def number(self, key: str, *, null: bool = False) -> Any:
        value = self.raw(key)
        if not (is_number(value) or (null and value is None)):
            raise self.error(key, "a number" + (" or null" if null else ""))
        return value

    def integer(self, key: str) -> int:
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "an integer")
        return value

    def text(self, key: str, *, null: bool = False) -> Any:
        value = self.raw(key)
        if not (isinstance(value, str) or (null and value is None)):
            raise self.error(key, "a string" + (" or null" if null else ""))
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """A JSON object whose content the record keeps as it is (an engine's description, a config)."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.error(key, "a JSON object")
        return value

    def listed(self, key: str) -> list[Any]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise self.error(key, "a JSON list")
        return value

    def object(self, key: str) -> RecordFields:
        return RecordFields(self.raw(key), self.path, self.name(key))

    def objects(self, key: str) -> dict[str, RecordFields]:
        """A JSON object of JSON objects (e.g. tracks by name), each as its own fields."""
        inner = self.object(key)
        return {name: inner.object(name) for name in inner.value}

    def numbers(self, key: str) -> dict[str, Any]:
        inner = self.object(key)
        return {name: inner.number(name) for name in inner.value}

    def texts(self, key: str) -> dict[str, str]:
        inner = self.object(key)
        return {name: inner.text(name) for name in inner.value}
