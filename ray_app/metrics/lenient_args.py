"""Lenient comparison of tool-call arguments: BFCL's AST checker rules, decided from one gold call.

`args_exact` asks for byte-equal canonical JSON; this asks whether the Berkeley Function Calling
Leaderboard's AST checker (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`) would accept the
predicted arguments if the gold call were its only acceptable answer. (The toolcall metric also asks
for the gold tool's name, as BFCL does; `lenient_args_match` compares arguments only.)

Parameters (the top level, under the tool's JSON Schema):
- a parameter the schema does not list is never accepted;
- a parameter one side leaves out matches only when it is optional (not in `required`) and the other
  side gives the schema's `default` (BFCL's answers list "" beside the default for such a parameter);
- the type is checked first: a string is never a number and a bool never a number; an integer is
  accepted for a `number` parameter but a float never for an `integer` one (3.0 vs 3);
- strings match after BFCL's `standardize_string`: spaces and `, . / - _ * ^` removed, lower-cased,
  `'` read as `"` ("New York, NY" == "new york ny", "Gluten-free" == "glutenfree");
- arrays are ordered; each element is type-checked and compared as a parameter is, except that an
  array in an array is compared whole by Python's ==. With `"uniqueItems": true` (a set) the elements
  match as multisets;
- objects: keys as for parameters (with the object's own schema), then each value as BFCL's dict
  checker compares it: strings standardised, anything else by Python's equality, with no type check
  (1 == 1.0 == true; arrays and objects inside compared whole, strings in them unstandardised);
- `anyOf` / `oneOf` / a list of types match when an option that the gold fits matches;
- a gold value that breaks its own schema (BFCL calls it a variable) accepts a value of the schema's
  or of the gold's type that equals it.

With no schema (the tool is not in the prompt) a parameter's type is the gold value's JSON type (an
integer and a float are both numbers) and every key must be on both sides. README's Metrics section
lists where BFCL, with its several acceptable answers, can decide otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# BFCL's standardize_string drops these before comparing: "April 1, 2024" == "april 1 2024".
_IGNORED_CHARACTERS = re.compile(r"[ ,./\-_*^]")
_JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")
Schema = dict[str, Any] | None
ValueMatch = Callable[[Any, Any, Schema], bool]


def standardize_string(text: str) -> str:
    """BFCL's normal form of a string: spaces and `, . / - _ * ^` removed, lower-cased, `'` as `"`."""
    return _IGNORED_CHARACTERS.sub("", text).lower().replace("'", '"')


def lenient_args_match(predicted_args: dict[str, Any], gold_args: dict[str, Any], parameters_schema: Schema) -> bool:
    """True when BFCL's rules accept the predicted arguments for the gold ones under the tool's schema."""
    return _keys_match(predicted_args, gold_args, parameters_schema, _parameter_match)


def _json_kind(value: Any) -> str | None:
    """The JSON type of a value, an integer and a float both being numbers."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    kinds = {str: "string", list: "array", dict: "object", type(None): "null"}
    return kinds.get(type(value))


def _fits_type(value: Any, json_type: str | None) -> bool:
    """Does `value` have JSON Schema type `json_type`? An integer is a `number`; 3.0 is not an `integer`."""
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type in _JSON_TYPES:  # the rest are JSON kinds
        return _json_kind(value) == json_type
    return True  # no type, or one JSON Schema does not define: nothing to check


def _json_type(schema: Schema) -> str | None:
    json_type = schema.get("type") if isinstance(schema, dict) else None
    return json_type if isinstance(json_type, str) else None


def _type_options(schema: Schema) -> list[Schema]:
    """The single-type schemas a value may follow: anyOf/oneOf options, or one per entry of a type list."""
    if not isinstance(schema, dict):
        return [None]
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        return [option for option in options if isinstance(option, dict)] or [None]
    if isinstance(schema.get("type"), list):
        return [{**schema, "type": json_type} for json_type in schema["type"]] or [None]
    return [schema]


def _parameter_match(predicted: Any, gold: Any, schema: Schema) -> bool:
    """BFCL's check of one parameter: its type first, then its value."""
    options = _type_options(schema)
    fitting = [option for option in options if _fits_type(gold, _json_type(option))]
    if not fitting:  # BFCL's "variable": the gold breaks its own schema, so compare by value
        typed_like = type(predicted) is type(gold) or any(_fits_type(predicted, _json_type(o)) for o in options)
        return typed_like and predicted == gold
    return any(_typed_value_match(predicted, gold, option) for option in fitting)


def _typed_value_match(predicted: Any, gold: Any, schema: Schema) -> bool:
    json_type = _json_type(schema)
    # Without a JSON type (none, "any", a Python-only type) the gold's own type is the one to check.
    if not _fits_type(predicted, json_type if json_type in _JSON_TYPES else _json_kind(gold)):
        return False
    if isinstance(gold, str):
        return standardize_string(predicted) == standardize_string(gold)
    if isinstance(gold, list):
        return _arrays_match(predicted, gold, schema)
    if isinstance(gold, dict):
        return _keys_match(predicted, gold, schema, _dict_value_match)
    return predicted == gold  # numbers by value (the type is checked), bools, null


def _element_match(predicted: Any, gold: Any, schema: Schema) -> bool:
    """An array element: typed as a parameter; an array in an array by Python's == alone, as in BFCL."""
    if isinstance(gold, list) or isinstance(predicted, list):
        return _fits_type(predicted, _json_type(schema) or "array") and predicted == gold
    return _parameter_match(predicted, gold, schema)


def _dict_value_match(predicted: Any, gold: Any, schema: Schema) -> bool:
    """BFCL's dict checker on one value of an object: strings standardised, anything else Python's ==."""
    if isinstance(predicted, str) and isinstance(gold, str):
        return standardize_string(predicted) == standardize_string(gold)
    return predicted == gold


def _item_schema(schema: Schema, index: int) -> Schema:
    """The schema of element `index`: `prefixItems[index]` (a tuple) or else `items`."""
    if not isinstance(schema, dict):
        return None
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list) and index < len(prefix) and isinstance(prefix[index], dict):
        return prefix[index]
    items = schema.get("items")
    return items if isinstance(items, dict) else None


def _arrays_match(predicted: list[Any], gold: list[Any], schema: Schema) -> bool:
    if len(predicted) != len(gold):
        return False
    if not (isinstance(schema, dict) and schema.get("uniqueItems") is True):
        return all(
            _element_match(p, g, _item_schema(schema, index))
            for index, (p, g) in enumerate(zip(predicted, gold, strict=True))
        )
    # Set-like: pair each predicted element with a distinct gold one. Greedy pairing suffices because
    # the relation is equality of normal forms (standardised strings, numbers by value) plus a type
    # check on the predicted element alone.
    item_schema = _item_schema(schema, 0)
    unpaired = list(gold)
    for element in predicted:
        partner = next((i for i, g in enumerate(unpaired) if _element_match(element, g, item_schema)), None)
        if partner is None:
            return False
        del unpaired[partner]
    return True


def _keys_match(predicted: dict[str, Any], gold: dict[str, Any], schema: Schema, value_match: ValueMatch) -> bool:
    """Key by key; a key on one side only must be optional with the other side's value its default."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    properties = properties if isinstance(properties, dict) else {}
    for key in predicted.keys() | gold.keys():
        property_schema = properties.get(key) if isinstance(properties.get(key), dict) else None
        if key in predicted and key in gold:
            if not value_match(predicted[key], gold[key], property_schema):
                return False
        elif not _omission_allowed(key, predicted, gold, schema, property_schema, value_match):
            return False
    return True


def _omission_allowed(
    key: str, predicted: dict, gold: dict, schema: Schema, property_schema: Schema, value_match: ValueMatch
) -> bool:
    if schema is None or property_schema is None or "default" not in property_schema:
        return False
    required = schema.get("required")
    if isinstance(required, list) and key in required:
        return False
    if key in predicted:  # the prediction gave the value: it must pass as the default would
        return value_match(predicted[key], property_schema["default"], property_schema)
    return _dict_value_match(gold[key], property_schema["default"], property_schema)  # is the gold the default?
