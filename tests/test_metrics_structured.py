"""Structured-track metrics: JSON validity, canonical exact match and field-level F1, hand-computed."""

from __future__ import annotations

import pytest

from ray_app.metrics import flatten_fields, score_structured_row, structured_metrics


@pytest.mark.parametrize(
    ("gold", "prediction", "json_valid", "exact_match"),
    [
        ('{"a": 1, "b": 2}', '{"b":2,"a":1}', True, True),  # key order and whitespace never matter
        ('{"a": 1}', '  \n{"a": 1}\n\t', True, True),  # surrounding whitespace is stripped
        ('{"a": 1}', '```json\n{"a": 1}\n```', False, False),  # markdown fence
        ('{"a": 1}', 'Here is the JSON: {"a": 1}', False, False),  # prose before
        ('{"a": 1}', '{"a": 1} Hope that helps!', False, False),  # prose after
        ('{"a": 1}', '{"a": 1.0}', True, False),  # 1 vs 1.0 is a mismatch
        ('{"city": "Montréal"}', '{"city": "Montr\\u00e9al"}', True, True),  # unicode escape, same value
        ('{"city": "Montréal"}', '{"city": "Montreal"}', True, False),
        ('{"a": 1}', "", False, False),  # empty output
        ('{"a": 1}', "   \n  ", False, False),  # whitespace-only output
        ('{"a": 1}', '{"a": NaN}', False, False),  # NaN is not JSON
        ('{"a": 1}', '{"a": Infinity}', False, False),
        ('{"a": 1}', "[1, 2]", True, False),  # any JSON value is valid, an array included
        ("3", "3", True, True),  # a number is valid JSON too
        ('{"a": [1, 2]}', '{"a": [2, 1]}', True, False),  # list order matters
        ('{"a": true}', '{"a": 1}', True, False),  # bool is not a number
    ],
)
def test_row_validity_and_exact_match(gold: str, prediction: str, json_valid: bool, exact_match: bool) -> None:
    score = score_structured_row(gold, prediction)
    assert (score.json_valid, score.exact_match) == (json_valid, exact_match)


def test_rates_count_every_row_and_invalid_outputs_are_misses() -> None:
    golds = ['{"a": 1}', '{"a": 2}', '{"a": 3}', '{"a": 4}']
    predictions = ['{"a": 1}', '{"a": 2.0}', "```json\n{}\n```", '{"a": 4}']
    metrics = structured_metrics(golds, predictions)
    assert metrics["rows"] == 4
    assert metrics["json_valid"] == 3
    assert metrics["exact_match"] == 2
    assert metrics["json_valid_rate"] == 0.75
    assert metrics["exact_match_rate"] == 0.5


def test_empty_input_gives_zero_rates_not_an_error() -> None:
    assert structured_metrics([], []) == {
        "rows": 0,
        "json_valid": 0,
        "exact_match": 0,
        "predicted_fields": 0,
        "gold_fields": 0,
        "correct_fields": 0,
        "json_valid_rate": 0.0,
        "exact_match_rate": 0.0,
        "field_precision": 0.0,
        "field_recall": 0.0,
        "field_f1": 0.0,
    }


def test_flatten_fields_uses_key_paths_with_lists_and_scalars_as_leaves() -> None:
    value = {"name": "Ann", "address": {"city": "Paris", "geo": {"lat": 48.8}}, "tags": ["b", "a"], "meta": {}}
    assert flatten_fields(value) == {
        ("name",): '"Ann"',
        ("address", "city"): '"Paris"',
        ("address", "geo", "lat"): "48.8",
        ("tags",): '["b","a"]',
        ("meta",): "{}",
    }
    assert flatten_fields(5) == {(): "5"}  # a top-level non-object is one field with path ""
    assert flatten_fields([1, {"a": 2}]) == {(): '[1,{"a":2}]'}


def test_field_f1_is_micro_averaged_over_nested_objects() -> None:
    # Row 1: gold has 4 fields (name, address.city, address.zip, tags); the prediction has 5
    # (one extra), of which name and address.city are right (zip is a number, tags reordered).
    # Row 2: the prediction is invalid: 0 predicted fields, 2 gold fields missed.
    golds = [
        '{"name": "Ann", "address": {"city": "Paris", "zip": "75001"}, "tags": ["a", "b"]}',
        '{"x": 1, "y": 2}',
    ]
    predictions = [
        '{"address": {"zip": 75001, "city": "Paris"}, "name": "Ann", "tags": ["b", "a"], "extra": true}',
        "x = 1, y = 2",
    ]
    metrics = structured_metrics(golds, predictions)
    assert (metrics["predicted_fields"], metrics["gold_fields"], metrics["correct_fields"]) == (5, 6, 2)
    assert metrics["field_precision"] == pytest.approx(2 / 5)
    assert metrics["field_recall"] == pytest.approx(2 / 6)
    assert metrics["field_f1"] == pytest.approx(4 / 11)  # 2PR / (P + R) with P = 2/5, R = 1/3


def test_field_scores_for_top_level_non_objects() -> None:
    score = score_structured_row("[1, 2]", "[1, 2]")
    assert (score.predicted_fields, score.gold_fields, score.correct_fields) == (1, 1, 1)
    score = score_structured_row('{"a": 1}', "[1]")
    assert (score.predicted_fields, score.gold_fields, score.correct_fields) == (1, 1, 0)


def test_mismatched_lengths_and_invalid_gold_are_errors() -> None:
    with pytest.raises(ValueError, match="2 gold completions but 1 predictions"):
        structured_metrics(['{"a": 1}', '{"a": 2}'], ['{"a": 1}'])
    with pytest.raises(ValueError, match="row 1: gold completion is not valid JSON"):
        structured_metrics(['{"a": 1}', "not json"], ['{"a": 1}', '{"a": 1}'])
