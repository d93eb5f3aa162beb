"""Strict JSON parsing and the canonical serialisation that every exact-match metric compares."""

from __future__ import annotations

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; no other JSON parser does, so neither do we.
    raise ValueError(f"{name} is not valid JSON")


def strict_json_loads(text: str) -> Any:
    """Parse `text` as standard JSON (no NaN/Infinity). Raises ValueError on anything else."""
    return json.loads(text, parse_constant=_reject_constant)


def canonical_json(value: Any) -> str:
    """Compact, key-sorted serialisation: key order and whitespace never matter, 1 vs 1.0 does."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compact_json(value: Any) -> str:
    """Compact serialisation that keeps key order (used inside prompts)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def readable_json(value: Any) -> str:
    """One-line JSON with the usual spaces, key order kept (used for gold completions)."""
    return json.dumps(value, ensure_ascii=False)
