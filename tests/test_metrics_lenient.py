"""`lenient_args_match`: BFCL's AST checker rules from one gold call, case by case (expected by hand)."""

from __future__ import annotations

import pytest

from ray_app.metrics import lenient_args_match
from ray_app.metrics.lenient_args import standardize_string

SEARCH_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"type": "integer", "default": 10},
        "lang": {"type": "string", "default": "en"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "weights": {"type": "array", "items": {"type": "number"}},
        "filters": {
            "type": "object",
            "properties": {
                "site": {"type": "string"},
                "max_age": {"type": "integer"},
                "safe": {"type": "boolean", "default": True},
            },
            "required": ["site"],
        },
    },
    "required": ["query"],
}
Q = {"query": "x"}  # the required parameter, given right


@pytest.mark.parametrize(
    ("text", "normal_form"),
    [
        ("Gluten-free", "glutenfree"),
        ("New York, NY", "newyorkny"),
        ("April 1, 2024", "april12024"),
        ("a/b.c_d*e^f-g h", "abcdefgh"),
        ("Joe's", 'joe"s'),  # ' is read as "
        ("New\tYork", "new\tyork"),  # only the space character goes, not tabs or newlines
        ("Straße", "straße"),  # lower(), not casefold(): "STRASSE" stays different
        ("a;b+c", "a;b+c"),  # other punctuation counts
    ],
)
def test_standardize_string_is_bfcls(text: str, normal_form: str) -> None:
    assert standardize_string(text) == normal_form


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ({"n": 1}, {"n": 1.0}, True),  # no schema, so numbers by value
        ({"n": 1.5}, {"n": 1}, False),
        ({"n": True}, {"n": 1}, False),  # a bool is never a number
        ({"n": False}, {"n": 0}, False),
        ({"n": True}, {"n": True}, True),
        ({"n": "1"}, {"n": 1}, False),  # a string is never a number
        ({"s": "Glutenfree"}, {"s": "Gluten-free"}, True),
        ({"s": "new york ny"}, {"s": "New York, NY"}, True),
        ({"s": "  New York "}, {"s": "newyork"}, True),  # every space goes, inner ones too
        ({"s": "2024/04/01"}, {"s": "2024-04-01"}, True),
        ({"s": "04-01-2024"}, {"s": "2024-04-01"}, False),  # another date format is another string
        ({"s": "New York; NY"}, {"s": "New York, NY"}, False),
        ({"s": "New\tYork"}, {"s": "New York"}, False),
        ({"s": "STRASSE"}, {"s": "Straße"}, False),
        ({"v": None}, {"v": None}, True),
        ({"v": None}, {"v": ""}, False),
        ({"a": [1, 2]}, {"a": [2, 1]}, False),  # arrays are ordered
        ({"a": [1, 2.0]}, {"a": [1.0, 2]}, True),
        ({"a": [1]}, {"a": [1, 1]}, False),
        ({"a": ["Los-Angeles"]}, {"a": ["los angeles"]}, True),  # elements standardised too
        ({"o": {"x": "A-1"}}, {"o": {"x": "a1"}}, True),  # an object's strings are standardised
        ({"o": {"x": {"y": "A"}}}, {"o": {"x": {"y": "a"}}}, False),  # deeper, BFCL compares exactly
        ({"o": {"x": ["A"]}}, {"o": {"x": ["a"]}}, False),
        ({"o": {"x": {"y": 1}}}, {"o": {"x": {"y": 1.0}}}, True),  # but numbers by value
        ({"o": {"x": 1, "z": 2}}, {"o": {"x": 1}}, False),
        ({"a": [["A"]]}, {"a": [["a"]]}, False),  # an array in an array: exactly too
        ({"a": 1}, {"a": 1, "b": 2}, False),  # no schema, so no default rule
        ({}, {}, True),
    ],
)
def test_schema_free(predicted: dict, gold: dict, expected: bool) -> None:
    assert lenient_args_match(predicted, gold, None) is expected


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        # types, as BFCL checks a parameter: an int for a number yes, a float for an integer no
        ({**Q, "score": 3}, {**Q, "score": 3.0}, True),
        ({**Q, "score": 3.0}, {**Q, "score": 3}, True),  # gold 3 is a number too
        ({**Q, "limit": 3.0}, {**Q, "limit": 3}, False),
        ({**Q, "limit": True}, {**Q, "limit": 1}, False),
        ({**Q, "limit": "3"}, {**Q, "limit": 3}, False),
        ({"query": "Gluten-free pancakes"}, {"query": "glutenfree Pancakes"}, True),
        # optional parameters: left out on one side only when the other gives the default
        (Q, {**Q, "limit": 10}, True),
        ({**Q, "limit": 10}, Q, True),
        ({**Q, "limit": 10.0}, Q, False),  # 10.0 is not an integer
        ({**Q, "lang": " EN "}, Q, True),  # default compared as a string
        (Q, {**Q, "limit": 20}, False),  # not the default
        ({**Q, "limit": "10"}, Q, False),
        (Q, {**Q, "tags": []}, False),  # optional but has no default
        ({**Q, "page": 1}, Q, False),  # not in the schema at all
        ({"limit": 10}, {**Q, "limit": 10}, False),  # required parameter missing
        # arrays: ordered, elements typed like parameters, sets with uniqueItems
        ({**Q, "tags": ["b", "a"]}, {**Q, "tags": ["a", "B"]}, True),
        ({**Q, "tags": ["a", "b"]}, {**Q, "tags": ["a", "b", "c"]}, False),
        ({**Q, "tags": ["a", "a", "b"]}, {**Q, "tags": ["a", "b", "b"]}, False),
        ({**Q, "ids": [2, 1]}, {**Q, "ids": [1, 2]}, False),
        ({**Q, "ids": [1.0, 2]}, {**Q, "ids": [1, 2]}, False),  # 1.0 is not an integer
        ({**Q, "weights": [1, 2]}, {**Q, "weights": [1.0, 2.0]}, True),
        # objects: key by key, values by Python's == (BFCL's dict checker type-checks nothing inside)
        ({**Q, "filters": {"site": "A.com"}}, {**Q, "filters": {"site": "a.com", "safe": True}}, True),
        ({**Q, "filters": {"site": "a.com"}}, {**Q, "filters": {"site": "a.com", "safe": False}}, False),
        ({**Q, "filters": {"safe": True}}, {**Q, "filters": {"site": "a.com", "safe": True}}, False),
        ({**Q, "filters": {"site": "a", "max_age": 7.0}}, {**Q, "filters": {"site": "a", "max_age": 7}}, True),
        ({**Q, "filters": {"site": "a", "safe": 1}}, {**Q, "filters": {"site": "a", "safe": True}}, True),  # 1 == True
        ({**Q, "filters": {"site": "a", "safe": "true"}}, {**Q, "filters": {"site": "a", "safe": True}}, False),
    ],
)  # fmt: skip
def test_with_schema(predicted: dict, gold: dict, expected: bool) -> None:
    assert lenient_args_match(predicted, gold, SEARCH_SCHEMA) is expected


def test_gold_that_breaks_its_schema_is_compared_by_value() -> None:
    # BFCL calls a gold value of another type than the schema's a variable and compares by value.
    assert lenient_args_match({"query": "x", "limit": "10"}, {"query": "x", "limit": "10"}, SEARCH_SCHEMA) is True
    assert lenient_args_match({"query": "x", "limit": 10}, {"query": "x", "limit": "10"}, SEARCH_SCHEMA) is False
    assert lenient_args_match({"query": "x", "limit": 3}, {"query": "x", "limit": 3.0}, SEARCH_SCHEMA) is True


def test_a_gold_without_a_required_parameter_is_trusted() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}, "required": ["n"]}
    assert lenient_args_match({}, {"n": 1}, schema) is False  # required, so the default rule does not apply
    assert lenient_args_match({}, {}, schema) is True  # both omit it: nothing differs


def test_default_null_is_a_default() -> None:
    schema = {"type": "object", "properties": {"since": {"type": ["string", "null"], "default": None}}}
    assert lenient_args_match({}, {"since": None}, schema) is True
    assert lenient_args_match({}, {"since": ""}, schema) is False


def test_any_of_matches_when_an_option_the_gold_fits_does() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ids": {"anyOf": [{"type": "string"}, {"type": "array", "uniqueItems": True}]},
            "count": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
    }
    assert lenient_args_match({"ids": [3, 1, 2]}, {"ids": [1, 2, 3]}, schema) is True
    assert lenient_args_match({"ids": [3, 1]}, {"ids": [1, 2]}, schema) is False
    assert lenient_args_match({"count": "Three"}, {"count": "three"}, schema) is True
    # 3.0 fits neither option the gold 3 fits (integer), so no by-value escape through "string"
    assert lenient_args_match({"count": 3.0}, {"count": 3}, schema) is False


def test_tuple_elements_follow_prefix_items() -> None:
    schema = {
        "type": "object",
        "properties": {"point": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "number"}]}},
    }
    assert lenient_args_match({"point": [1, 2]}, {"point": [1, 2.0]}, schema) is True
    assert lenient_args_match({"point": [1.0, 2.0]}, {"point": [1, 2.0]}, schema) is False
