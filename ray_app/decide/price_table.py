"""The price table behind "cost per 1,000 calls", and the two cost formulas.

The table is a JSON file (default `slm_swap/price_table.json`; override with `--price-table FILE`
or the `SLM_SWAP_PRICE_TABLE` environment variable):

    {"teacher_usd_per_1m_tokens": {"default": {"input": 0.15, "output": 0.60}, "<model>": {...}},
     "slm_usd_per_instance_hour": {"cpu-2core": 0.10, "<hardware>": <USD per hour>},
     "notes": [...]}   # optional, free text

Costs per 1,000 calls, in USD:
- teacher (pay per token): (mean prompt tokens x input price + mean completion tokens x output
  price) / 1M x 1000.
- SLM (pay per instance-hour, throughput-based): (eval wall time / rows) x hourly price / 3600 x 1000.
  The instance is billed for the whole evaluation and the bill is spread over the rows it answered,
  so batching lowers it; it assumes the instance is kept busy (idle hours in production cost extra).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.paths import WORKSPACE

DEFAULT_PRICE_TABLE_PATH = WORKSPACE / "price_table.json"
PRICE_TABLE_ENV = "SLM_SWAP_PRICE_TABLE"
DEFAULT_TEACHER_ENTRY = "default"
TABLE_KEYS = ("teacher_usd_per_1m_tokens", "slm_usd_per_instance_hour", "notes")


class PriceTableError(ValueError):
    """A price table file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class TokenPrice:
    """A hosted model's list price in USD per 1M tokens."""

    input_usd_per_1m: float
    output_usd_per_1m: float


@dataclass(frozen=True)
class PriceTable:
    path: Path  # the file it was loaded from
    teacher_usd_per_1m_tokens: Mapping[str, TokenPrice]  # model name → price; always has "default"
    slm_usd_per_instance_hour: Mapping[str, float]  # hardware name → USD per instance-hour

    def teacher_price(self, model: str | None) -> tuple[str, TokenPrice]:
        """(entry used, price): the model's own entry when listed, else "default"."""
        entry = model if model in self.teacher_usd_per_1m_tokens else DEFAULT_TEACHER_ENTRY
        return entry, self.teacher_usd_per_1m_tokens[entry]

    def slm_hourly_usd(self, hardware: str) -> float:
        if hardware not in self.slm_usd_per_instance_hour:
            known = ", ".join(sorted(self.slm_usd_per_instance_hour))
            raise PriceTableError(
                f"{self.path}: field 'slm_usd_per_instance_hour' has no entry {hardware!r} (known: {known}); "
                "add it to the table or pick a listed hardware name"
            )
        return self.slm_usd_per_instance_hour[hardware]

    def to_json(self) -> dict[str, Any]:
        return {
            "teacher_usd_per_1m_tokens": {
                name: {"input": price.input_usd_per_1m, "output": price.output_usd_per_1m}
                for name, price in self.teacher_usd_per_1m_tokens.items()
            },
            "slm_usd_per_instance_hour": dict(self.slm_usd_per_instance_hour),
        }


def teacher_cost_per_1k_calls(price: TokenPrice, mean_prompt_tokens: float, mean_completion_tokens: float) -> float:
    """USD per 1,000 hosted calls of the mean size."""
    per_call = (mean_prompt_tokens * price.input_usd_per_1m + mean_completion_tokens * price.output_usd_per_1m) / 1e6
    return per_call * 1000


def slm_cost_per_1k_calls(usd_per_instance_hour: float, wall_time_s: float, rows: int) -> float:
    """USD per 1,000 SLM calls at the throughput the evaluation measured (wall time / rows)."""
    if rows <= 0:
        raise ValueError(f"rows must be positive to spread the instance cost over them, got {rows}")
    return wall_time_s / rows * usd_per_instance_hour / 3600 * 1000


def resolve_price_table_path(path: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """`path` (the --price-table flag), else $SLM_SWAP_PRICE_TABLE, else the project's default table."""
    if path is not None:
        return Path(path).expanduser()
    if environ.get(PRICE_TABLE_ENV):
        return Path(environ[PRICE_TABLE_ENV]).expanduser()
    return DEFAULT_PRICE_TABLE_PATH


def _usd(path: Path, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        shown = json.dumps(value, ensure_ascii=False)[:80]
        raise PriceTableError(f"{path}: field {field!r} must be a non-negative number of USD, got {shown}")
    return float(value)


def _object(path: Path, field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise PriceTableError(f"{path}: field {field!r} must be a non-empty JSON object")
    return value


def parse_price_table(path: Path, table: Any) -> PriceTable:
    """Check a decoded table (see the module docstring); PriceTableError names the bad field."""
    if not isinstance(table, dict):
        raise PriceTableError(f"{path}: the price table must be a JSON object with keys {', '.join(TABLE_KEYS[:2])}")
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise PriceTableError(f"{path}: unknown field(s) {', '.join(map(repr, unknown))} (expected {TABLE_KEYS})")
    for key in TABLE_KEYS[:2]:
        if key not in table:
            raise PriceTableError(f"{path}: missing field {key!r}")
    teacher_field = "teacher_usd_per_1m_tokens"
    teacher: dict[str, TokenPrice] = {}
    for model, price in _object(path, teacher_field, table[teacher_field]).items():
        field = f"{teacher_field}.{model}"
        if not isinstance(price, dict) or set(price) != {"input", "output"}:
            raise PriceTableError(f"{path}: field {field!r} must be {{'input': USD, 'output': USD}} per 1M tokens")
        teacher[model] = TokenPrice(
            _usd(path, f"{field}.input", price["input"]), _usd(path, f"{field}.output", price["output"])
        )
    if DEFAULT_TEACHER_ENTRY not in teacher:
        raise PriceTableError(f"{path}: field {teacher_field!r} needs a {DEFAULT_TEACHER_ENTRY!r} entry")
    slm_field = "slm_usd_per_instance_hour"
    slm = {
        hardware: _usd(path, f"{slm_field}.{hardware}", hourly)
        for hardware, hourly in _object(path, slm_field, table[slm_field]).items()
    }
    return PriceTable(path=path, teacher_usd_per_1m_tokens=teacher, slm_usd_per_instance_hour=slm)


def load_price_table(path: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> PriceTable:
    """The price table at `resolve_price_table_path(path, environ)`, checked."""
    resolved = resolve_price_table_path(path, environ)
    if not resolved.is_file():
        raise PriceTableError(
            f"{resolved}: price table not found (set --price-table FILE or {PRICE_TABLE_ENV}, "
            f"or copy {DEFAULT_PRICE_TABLE_PATH})"
        )
    try:
        table = json.loads(resolved.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PriceTableError(
            f"{resolved}:{error.lineno}: not valid JSON: {error.msg} at column {error.colno}"
        ) from None
    return parse_price_table(resolved, table)
