"""Scoring a hand-made predictions file, and the `file:line:` errors a bad one produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_app.metrics import PredictionsFileError, read_predictions, score_predictions_file
from ray_app.prompts import structured_prompt, toolcall_prompt
from tests.sample_tools import SEARCH_CITY, WEATHER_WITH_UNITS


def record(index: int, prompt: str, completion: str, prediction: str) -> dict:
    return {
        "index": index,
        "prompt": prompt,
        "completion": completion,
        "prediction": prediction,
        "latency_s": 0.25,
        "prompt_tokens": 120,
        "completion_tokens": 18,
    }


def write_predictions(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = [json.dumps(record(i, *row), ensure_ascii=False) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_structured_file_rates(tmp_path: Path) -> None:
    prompt = structured_prompt(WEATHER_WITH_UNITS, "Weather in Paris?")
    rows = [
        # (gold, prediction) → json_valid, exact_match, fields predicted / gold / correct
        ('{"a": 1, "b": "x"}', '{"b": "x", "a": 1}'),  # valid, exact, 2 / 2 / 2
        ('{"a": 1}', '{"a": 1.0}'),  # valid, miss, 1 / 1 / 0
        ('{"a": 2}', '```json\n{"a": 2}\n```'),  # invalid, 0 / 1 / 0
        ('{"a": 3}', ""),  # invalid, 0 / 1 / 0
        ('{"n": {"x": 1}}', '{"n": {"x": 1}}'),  # valid, exact, 1 / 1 / 1
        ("[1, 2]", "[1, 2]"),  # valid, exact, 1 / 1 / 1
    ]
    path = write_predictions(tmp_path / "predictions.jsonl", [(f"{prompt} #{i}", *row) for i, row in enumerate(rows)])
    metrics = score_predictions_file("structured", path)
    assert metrics == {
        "rows": 6,
        "json_valid": 4,
        "exact_match": 3,
        "predicted_fields": 5,
        "gold_fields": 7,
        "correct_fields": 4,
        "json_valid_rate": 4 / 6,
        "exact_match_rate": 3 / 6,
        "field_precision": 4 / 5,
        "field_recall": 4 / 7,
        "field_f1": pytest.approx(2 / 3),  # 2PR / (P + R) = (32/35) / (48/35)
    }
    assert json.loads(json.dumps(metrics)) == metrics  # what the CLI prints


def test_toolcall_file_rates(tmp_path: Path) -> None:
    prompt = toolcall_prompt([SEARCH_CITY, WEATHER_WITH_UNITS], "Weather in Paris for 3 days?")
    gold = '<tool_call name="get_weather">{"city": "Paris", "days": 3}</tool_call>'
    gold_with_default = '<tool_call name="get_weather">{"city": "Paris", "days": 3, "units": "metric"}</tool_call>'
    rows = [
        (gold, gold),  # valid, name, exact, lenient
        (gold, 'Calling: <tool_call name="get_weather">{"days": 3, "city": "paris"}</tool_call>'),  # v n - l
        (gold, '<tool_call name="get_weather">{"days": 3.0, "city": "Paris"}</tool_call>'),  # v n - - (3.0 for int)
        (gold, '<tool_call name="search_city">{"city": "Paris", "days": 3}</tool_call>'),  # v - e - (another tool)
        (gold, gold + gold),  # two wrappers: nothing
        (gold, ""),  # nothing
        (gold_with_default, gold),  # omitted optional = the default: v n - l
    ]
    path = write_predictions(tmp_path / "predictions.jsonl", [(prompt, *row) for row in rows])
    assert score_predictions_file("toolcall", path) == {
        "rows": 7,
        "valid_call": 5,
        "name_match": 4,
        "args_exact": 2,
        "args_lenient": 3,
        "valid_call_rate": 5 / 7,
        "name_match_rate": 4 / 7,
        "args_exact_rate": 2 / 7,
        "args_lenient_rate": 3 / 7,
    }


def test_read_predictions_returns_typed_records(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**record(0, "p", "{}", "{}"), "latency_s": 2, "engine": "vllm"}) + "\n")
    (only,) = read_predictions(path)
    assert only.latency_s == 2.0 and isinstance(only.latency_s, float)
    assert only.to_json() == {**record(0, "p", "{}", "{}"), "latency_s": 2.0}  # extra keys are ignored


def test_latency_is_optional_because_evaluations_keep_it_in_timings_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    line = {k: v for k, v in record(0, "p", "{}", "{}").items() if k != "latency_s"}
    path.write_text(json.dumps(line) + "\n")
    (only,) = read_predictions(path)
    assert only.latency_s is None and only.to_json() == line


def bad_file(tmp_path: Path, second_line: dict | str) -> Path:
    path = tmp_path / "bad.jsonl"
    line = second_line if isinstance(second_line, str) else json.dumps(second_line)
    path.write_text(json.dumps(record(0, "p0", "{}", "{}")) + "\n" + line + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        (
            {k: v for k, v in record(1, "p1", "{}", "{}").items() if k != "prompt_tokens"},
            "missing field 'prompt_tokens'",
        ),
        (
            {k: v for k, v in record(1, "p1", "{}", "{}").items() if k != "prediction"},
            "missing field 'prediction' (expected a string)",
        ),
        (
            {**record(1, "p1", "{}", "{}"), "prompt_tokens": "120"},
            "field 'prompt_tokens' must be a non-negative integer",
        ),
        ({**record(1, "p1", "{}", "{}"), "index": True}, "field 'index' must be a non-negative integer, got true"),
        ({**record(1, "p1", "{}", "{}"), "prediction": None}, "field 'prediction' must be a string, got null"),
        ({**record(1, "p1", "{}", "{}"), "latency_s": -1.0}, "field 'latency_s' must be a non-negative number"),
        (json.dumps(record(1, "p1", "{}", "{}")).replace("0.25", "NaN"), "field 'latency_s' must be"),
        (record(2, "p1", "{}", "{}"), "field 'index' is 2, expected 1 (indexes must be 0..n-1"),
        (record(0, "p1", "{}", "{}"), "field 'index' is 0, expected 1"),
        ('{"index": 1,', "not valid JSON"),
        ("[1, 2]", "line must be a JSON object, got list"),
        ("", "empty line"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, second_line: dict | str, message: str) -> None:
    path = bad_file(tmp_path, second_line)
    with pytest.raises(PredictionsFileError) as error:
        read_predictions(path)
    assert str(error.value).startswith(f"{path}:2: ")
    assert message in str(error.value)


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [record(0, "a", "{}", "{}"), {"index": 1}, record(2, "c", "{}", "{}"), record(9, "d", "{}", "{}")]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    with pytest.raises(PredictionsFileError) as error:
        read_predictions(path)
    assert str(error.value).splitlines() == [
        f"{path}:2: missing field 'prompt' (expected a string)",
        f"{path}:4: field 'index' is 9, expected 3 (indexes must be 0..n-1 in split order, one line per test row)",
    ]


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(PredictionsFileError, match="file not found"):
        read_predictions(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PredictionsFileError, match="empty.jsonl: the predictions file is empty"):
        read_predictions(tmp_path / "empty.jsonl")


def test_gold_that_does_not_fit_the_track_is_reported_by_line(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "p.jsonl", [("p0", '{"a": 1}', "{}"), ("p1", "not json", "{}")])
    with pytest.raises(PredictionsFileError, match=r"p\.jsonl:2: field 'completion' must be pure JSON"):
        score_predictions_file("structured", path)
    with pytest.raises(PredictionsFileError, match=r"p\.jsonl:1: field 'completion': completion must be exactly one"):
        score_predictions_file("toolcall", path)
    with pytest.raises(ValueError, match="unknown track 'chat'"):
        score_predictions_file("chat", path)  # type: ignore[arg-type]
