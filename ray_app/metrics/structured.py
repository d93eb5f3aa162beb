"""Metrics of the structured track: the model must answer with the gold JSON value and nothing else.

Per row (`score_structured_row`) and over a split (`structured_metrics`):

- `json_valid_rate`: the prediction, stripped of surrounding whitespace, parses as standard JSON
  (`strict_json_loads`: no NaN/Infinity). Any JSON value counts (an array, a number); a markdown
  fence or prose around the JSON makes it invalid.
- `exact_match_rate`: the parsed prediction and the parsed gold have the same `canonical_json`:
  key order, whitespace and unicode escapes never matter, but 1 vs 1.0 does.
- `field_precision`, `field_recall`, `field_f1`: field-level scores, micro-averaged over the split.
  A value is flattened into fields: a non-empty object contributes one field per key, nested
  objects recursively (paths like `address.city`); anything else (a list, a scalar, an empty
  object) is a leaf field compared canonically, so a top-level non-object is one field with path "".
  A predicted field is correct when gold has the same path with a canonically equal value.
  precision = correct / predicted fields, recall = correct / gold fields (summed over all rows),
  f1 = their harmonic mean. An invalid prediction has 0 predicted fields: it lowers recall only.

Every rate is over every row: an invalid prediction is a miss, never dropped. Rates are unrounded
floats; with no rows (or an empty denominator) a rate is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_app.json_text import canonical_json, strict_json_loads
from ray_app.metrics.rates import rate

FieldPath = tuple[str, ...]


@dataclass(frozen=True)
class StructuredRowScore:
    """Which structured metrics one prediction hits, and its field counts."""

    json_valid: bool
    exact_match: bool
    predicted_fields: int
    gold_fields: int
    correct_fields: int


def flatten_fields(value: Any, path: FieldPath = ()) -> dict[FieldPath, str]:
    """Field path (tuple of keys; `()` is the top level) → canonical JSON of the leaf value there."""
    if isinstance(value, dict) and value:
        fields: dict[FieldPath, str] = {}
        for key, child in value.items():
            fields.update(flatten_fields(child, (*path, key)))
        return fields
    return {path: canonical_json(value)}


def parse_json_prediction(prediction: str) -> tuple[bool, Any]:
    """(True, value) when the stripped prediction is standard JSON, else (False, None)."""
    try:
        return True, strict_json_loads(prediction.strip())
    except ValueError:
        return False, None


def score_structured_row(gold: str, prediction: str) -> StructuredRowScore:
    """Score one prediction against its gold completion (which must be valid JSON: ValueError otherwise)."""
    gold_value = strict_json_loads(gold.strip())
    gold_fields = flatten_fields(gold_value)
    valid, value = parse_json_prediction(prediction)
    if not valid:
        return StructuredRowScore(False, False, 0, len(gold_fields), 0)
    predicted_fields = flatten_fields(value)
    correct = sum(1 for path, text in predicted_fields.items() if gold_fields.get(path) == text)
    return StructuredRowScore(
        json_valid=True,
        exact_match=canonical_json(value) == canonical_json(gold_value),
        predicted_fields=len(predicted_fields),
        gold_fields=len(gold_fields),
        correct_fields=correct,
    )


def structured_metrics(golds: list[str], predictions: list[str]) -> dict[str, float | int]:
    """Rates and counts of the structured track over every row (see the module docstring)."""
    if len(golds) != len(predictions):
        raise ValueError(f"got {len(golds)} gold completions but {len(predictions)} predictions")
    scores = []
    for index, (gold, prediction) in enumerate(zip(golds, predictions, strict=True)):
        try:
            scores.append(score_structured_row(gold, prediction))
        except ValueError as error:
            raise ValueError(f"row {index}: gold completion is not valid JSON: {error}") from None
    rows = len(scores)
    json_valid = sum(score.json_valid for score in scores)
    exact_match = sum(score.exact_match for score in scores)
    predicted = sum(score.predicted_fields for score in scores)
    gold_total = sum(score.gold_fields for score in scores)
    correct = sum(score.correct_fields for score in scores)
    precision, recall = rate(correct, predicted), rate(correct, gold_total)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "rows": rows,
        "json_valid": json_valid,
        "exact_match": exact_match,
        "predicted_fields": predicted,
        "gold_fields": gold_total,
        "correct_fields": correct,
        "json_valid_rate": rate(json_valid, rows),
        "exact_match_rate": rate(exact_match, rows),
        "field_precision": precision,
        "field_recall": recall,
        "field_f1": f1,
    }
