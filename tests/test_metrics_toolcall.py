"""Toolcall-track metrics on hand-made wrappers, with schemas recovered from real toolcall prompts."""

from __future__ import annotations

import pytest

from ray_app.metrics import (
    CORE_METRICS,
    gold_parameters_schema,
    score_rows,
    score_toolcall_row,
    toolcall_metrics,
)
from ray_app.prompts import toolcall_prompt
from tests.sample_tools import SEARCH_CITY, WEATHER_WITH_UNITS

PROMPT = toolcall_prompt([SEARCH_CITY, WEATHER_WITH_UNITS], "What is the weather in Paris for 3 days?")
GOLD = '<tool_call name="get_weather">{"city": "Paris", "days": 3}</tool_call>'


def call(body: str, name: str = "get_weather") -> str:
    return f'<tool_call name="{name}">{body}</tool_call>'


@pytest.mark.parametrize(
    ("prediction", "hits"),
    [
        # hits = (valid_call, name_match, args_exact, args_lenient)
        (GOLD, (True, True, True, True)),
        (call('{"days":3,"city":"Paris"}'), (True, True, True, True)),  # key order
        ("Sure! " + call('{"city": "Paris", "days": 3}') + " Done.", (True, True, True, True)),  # prose around
        ("```\n" + GOLD + "\n```", (True, True, True, True)),  # a fence is just text outside the wrapper
        (GOLD + GOLD, (False, False, False, False)),  # two wrappers
        (call('{"city": "Paris", "days": 3}', name="search_city"), (True, False, True, False)),  # wrong tool name
        (call('["Paris", 3]'), (False, False, False, False)),  # args that are a JSON array
        (call('{"city": "Paris", "days": NaN}'), (False, False, False, False)),  # NaN rejected
        (call('{"city": "Paris", "days": 3'), (False, False, False, False)),  # truncated JSON
        ("", (False, False, False, False)),  # empty output
        ("  \n\t ", (False, False, False, False)),  # whitespace-only output
        ('{"city": "Paris", "days": 3}', (False, False, False, False)),  # bare JSON, no wrapper
        (call('{"city": "Paris", "days": 3.0}'), (True, True, False, False)),  # 3.0 for an integer (BFCL)
        (call('{"city": " pa-ris ", "days": 3}'), (True, True, False, True)),  # case, spaces, BFCL's punctuation
        (call('{"city": "Paris", "days": "3"}'), (True, True, False, False)),  # "3" is not 3
        (call('{"city": "Paris", "days": 3, "units": "metric"}'), (True, True, False, True)),  # default given
        (call('{"city": "Paris", "days": 3, "units": "imperial"}'), (True, True, False, False)),
        (call('{"city": "Paris"}'), (True, True, False, False)),  # required parameter missing
    ],
)
def test_row_hits(prediction: str, hits: tuple[bool, bool, bool, bool]) -> None:
    score = score_toolcall_row(GOLD, prediction, PROMPT)
    assert (score.valid_call, score.name_match, score.args_exact, score.args_lenient) == hits


def test_unicode_escapes_compare_as_the_same_value() -> None:
    gold = call('{"city": "Zürich", "days": 1}')
    assert score_toolcall_row(gold, call('{"city": "Z\\u00fcrich", "days": 1}'), PROMPT).args_exact is True
    assert score_toolcall_row(gold, call('{"city": "Zurich", "days": 1}'), PROMPT).args_lenient is False


def test_bool_is_never_an_integer() -> None:
    gold = call('{"city": "Paris", "days": 1}')
    score = score_toolcall_row(gold, call('{"city": "Paris", "days": true}'), PROMPT)
    assert (score.valid_call, score.args_exact, score.args_lenient) == (True, False, False)


def test_schema_comes_from_the_gold_tool_in_the_prompt() -> None:
    assert gold_parameters_schema(PROMPT, "get_weather") == WEATHER_WITH_UNITS["parameters"]
    assert gold_parameters_schema(PROMPT, "book_flight") is None  # tool not listed
    assert gold_parameters_schema("free text, not a toolcall prompt", "get_weather") is None
    assert gold_parameters_schema(None, "get_weather") is None


def test_default_rule_needs_the_schema() -> None:
    gold = call('{"city": "Paris", "days": 3, "units": "metric"}')
    prediction = call('{"city": "Paris", "days": 3}')
    assert score_toolcall_row(gold, prediction, PROMPT).args_lenient is True
    # Without a parseable prompt (or without the tool in it) the comparison is schema-free.
    assert score_toolcall_row(gold, prediction, "not a toolcall prompt").args_lenient is False
    other_tools = toolcall_prompt([SEARCH_CITY], "What is the weather in Paris?")
    assert score_toolcall_row(gold, prediction, other_tools).args_lenient is False


def test_rates_count_every_row() -> None:
    predictions = [
        GOLD,  # all four
        "Answer: " + call('{"city": "PARIS", "days": 3}'),  # valid, name, lenient
        call('{"city": "Paris", "days": 3}', name="search_city"),  # valid, exact (another tool: not lenient)
        GOLD + "\n" + GOLD,  # nothing
        "",  # nothing
    ]
    metrics = toolcall_metrics([GOLD] * 5, predictions, [PROMPT] * 5)
    assert metrics == {
        "rows": 5,
        "valid_call": 3,
        "name_match": 2,
        "args_exact": 2,
        "args_lenient": 2,
        "valid_call_rate": 0.6,
        "name_match_rate": 0.4,
        "args_exact_rate": 0.4,
        "args_lenient_rate": 0.4,
    }


def test_empty_input_gives_zero_rates() -> None:
    metrics = toolcall_metrics([], [], [])
    assert metrics["rows"] == 0
    assert [metrics[name] for name in CORE_METRICS["toolcall"]] == [0.0, 0.0, 0.0]
    assert metrics["args_lenient_rate"] == 0.0


def test_malformed_gold_and_length_mismatch_are_errors() -> None:
    with pytest.raises(ValueError, match="row 1: gold completion is not a tool call"):
        toolcall_metrics([GOLD, "prose " + GOLD], [GOLD, GOLD], [PROMPT, PROMPT])
    with pytest.raises(ValueError, match="2 gold completions, 1 predictions and 2 prompts"):
        toolcall_metrics([GOLD, GOLD], [GOLD], [PROMPT, PROMPT])


def test_score_rows_dispatches_by_track_and_reports_the_core_metrics() -> None:
    assert CORE_METRICS == {
        "structured": ("json_valid_rate", "exact_match_rate"),
        "toolcall": ("valid_call_rate", "name_match_rate", "args_exact_rate"),
    }
    toolcall = score_rows("toolcall", [GOLD, GOLD], [GOLD, ""], [PROMPT, PROMPT])
    assert [toolcall[name] for name in CORE_METRICS["toolcall"]] == [0.5, 0.5, 0.5]
    structured = score_rows("structured", ['{"a": 1}', '{"a": 2}'], ['{"a": 1}', '{"a": 2.0}'], ["p1", "p2"])
    assert [structured[name] for name in CORE_METRICS["structured"]] == [1.0, 0.5]


def test_score_rows_rejects_unknown_tracks_and_uneven_lists() -> None:
    with pytest.raises(ValueError, match="unknown track 'chat'"):
        score_rows("chat", [], [], [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 gold completions, 1 predictions and 0 prompts"):
        score_rows("structured", ['{"a": 1}'], ['{"a": 1}'], [])
