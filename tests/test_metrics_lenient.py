"""`lenient_args_match`: BFCL-style comparison of tool-call arguments, case by case."""

from __future__ import annotations

import pytest

from ray_app.metrics import lenient_args_match

SEARCH_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"type": "integer", "default": 10},
        "lang": {"type": "string", "default": "en"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "filters": {
            "type": "object",
            "properties": {"site": {"type": "string"}, "safe": {"type": "boolean", "default": True}},
            "required": ["site"],
        },
    },
    "required": ["query"],
}


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ({"n": 1}, {"n": 1.0}, True),  # numbers by value
        ({"n": 1.5}, {"n": 1}, False),
        ({"n": True}, {"n": 1}, False),  # a bool is never a number
        ({"n": False}, {"n": 0}, False),
        ({"n": True}, {"n": True}, True),
        ({"n": "1"}, {"n": 1}, False),  # a string is never a number
        ({"s": "  New York "}, {"s": "new york"}, True),  # stripped and case-folded
        ({"s": "STRASSE"}, {"s": "Straße"}, True),  # case-folding, not just lower()
        ({"s": "newyork"}, {"s": "new york"}, False),  # inner whitespace still counts
        ({"v": None}, {"v": None}, True),
        ({"v": None}, {"v": ""}, False),
        ({"a": [1, 2]}, {"a": [2, 1]}, False),  # arrays are ordered without a schema
        ({"a": [1, 2.0]}, {"a": [1.0, 2]}, True),
        ({"a": [1]}, {"a": [1, 1]}, False),
        ({"o": {"x": {"y": "A"}}}, {"o": {"x": {"y": "a"}}}, True),  # objects recursively
        ({"o": {"x": 1, "z": 2}}, {"o": {"x": 1}}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),  # no schema, so no default rule
        ({}, {}, True),
    ],
)
def test_schema_free(predicted: dict, gold: dict, expected: bool) -> None:
    assert lenient_args_match(predicted, gold, None) is expected


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ({"query": "x"}, {"query": "x", "limit": 10}, True),  # omitted optional = gold gives default
        ({"query": "x", "limit": 10.0}, {"query": "x"}, True),  # and the other way round
        ({"query": "x", "lang": " EN "}, {"query": "x"}, True),  # default compared leniently too
        ({"query": "x"}, {"query": "x", "limit": 20}, False),  # not the default
        ({"query": "x", "limit": "10"}, {"query": "x"}, False),  # "10" is not the default 10
        ({"query": "x"}, {"query": "x", "tags": []}, False),  # optional but has no default
        ({"query": "x", "page": 1}, {"query": "x"}, False),  # not in the schema at all
        ({"limit": 10}, {"query": "x", "limit": 10}, False),  # required parameter missing
        ({"query": "x", "tags": ["b", "a"]}, {"query": "x", "tags": ["a", "B"]}, True),  # uniqueItems
        ({"query": "x", "tags": ["a", "b"]}, {"query": "x", "tags": ["a", "b", "c"]}, False),
        ({"query": "x", "tags": ["a", "a", "b"]}, {"query": "x", "tags": ["a", "b", "b"]}, False),
        ({"query": "x", "ids": [2, 1]}, {"query": "x", "ids": [1, 2]}, False),  # no uniqueItems: ordered
        (
            {"query": "x", "filters": {"site": "a.com"}},
            {"query": "x", "filters": {"site": "a.com", "safe": True}},
            True,
        ),
        (
            {"query": "x", "filters": {"site": "a.com"}},
            {"query": "x", "filters": {"site": "a.com", "safe": False}},
            False,
        ),
        ({"query": "x", "filters": {"safe": True}}, {"query": "x", "filters": {"site": "a.com", "safe": True}}, False),
    ],
)
def test_with_schema(predicted: dict, gold: dict, expected: bool) -> None:
    assert lenient_args_match(predicted, gold, SEARCH_SCHEMA) is expected


def test_required_parameter_with_a_default_may_not_be_omitted() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}, "required": ["n"]}
    assert lenient_args_match({}, {"n": 1}, schema) is False
    assert lenient_args_match({}, {}, schema) is True  # both omit: nothing differs


def test_default_null_is_a_default() -> None:
    schema = {"type": "object", "properties": {"since": {"type": ["string", "null"], "default": None}}}
    assert lenient_args_match({}, {"since": None}, schema) is True
    assert lenient_args_match({}, {"since": ""}, schema) is False


def test_any_of_matches_when_one_option_does() -> None:
    schema = {
        "type": "object",
        "properties": {"ids": {"anyOf": [{"type": "string"}, {"type": "array", "uniqueItems": True}]}},
    }
    assert lenient_args_match({"ids": [3, 1, 2]}, {"ids": [1, 2, 3]}, schema) is True
    assert lenient_args_match({"ids": [3, 1]}, {"ids": [1, 2]}, schema) is False
