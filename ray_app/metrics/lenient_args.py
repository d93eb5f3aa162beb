"""Lenient comparison of tool-call arguments, in the spirit of BFCL's AST checker.

`args_exact` asks for byte-equal canonical JSON; this asks whether a reasonable checker would call
the two argument objects the same call:

- numbers are compared by value (1 == 1.0), but a bool is never a number and "1" is never 1;
- strings match after stripping surrounding whitespace and case-folding ("  Paris" == "paris");
- arrays are order-sensitive, except when their schema has `"uniqueItems": true` (a set), where
  they match as multisets (same length, every element paired with a distinct matching element);
- objects match key by key, recursively, with the property's schema when there is one;
- an optional parameter (not in the object's `required` list) that one side omits matches when the
  other side gives the schema's `default`; both sides omitting it matches too. Any other key present
  on one side only is a mismatch;
- `anyOf` / `oneOf` schemas match when any option does.

With no schema (the tool was not found in the prompt) the same rules apply minus uniqueItems and
defaults: arrays are order-sensitive and every key must be on both sides.
"""

from __future__ import annotations

from typing import Any


def lenient_args_match(
    predicted_args: dict[str, Any], gold_args: dict[str, Any], parameters_schema: dict[str, Any] | None
) -> bool:
    """True when the predicted arguments leniently equal the gold ones under the tool's JSON Schema."""
    return _values_match(predicted_args, gold_args, parameters_schema)


def _is_number(value: Any) -> bool:
    # bool is a subclass of int in Python; JSON keeps them apart, and so do we.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _values_match(predicted: Any, gold: Any, schema: dict[str, Any] | None) -> bool:
    options = _schema_options(schema)
    if options:
        return any(_values_match(predicted, gold, option) for option in options)
    if isinstance(predicted, bool) or isinstance(gold, bool):
        return isinstance(predicted, bool) and isinstance(gold, bool) and predicted == gold
    if _is_number(predicted) or _is_number(gold):
        return _is_number(predicted) and _is_number(gold) and predicted == gold
    if isinstance(predicted, str) or isinstance(gold, str):
        return (
            isinstance(predicted, str)
            and isinstance(gold, str)
            and predicted.strip().casefold() == gold.strip().casefold()
        )
    if isinstance(predicted, list) or isinstance(gold, list):
        return isinstance(predicted, list) and isinstance(gold, list) and _arrays_match(predicted, gold, schema)
    if isinstance(predicted, dict) or isinstance(gold, dict):
        return isinstance(predicted, dict) and isinstance(gold, dict) and _objects_match(predicted, gold, schema)
    return predicted is None and gold is None


def _schema_options(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not isinstance(schema, dict):
        return []
    options = schema.get("anyOf") or schema.get("oneOf")
    return [option for option in options if isinstance(option, dict)] if isinstance(options, list) else []


def _arrays_match(predicted: list[Any], gold: list[Any], schema: dict[str, Any] | None) -> bool:
    if len(predicted) != len(gold):
        return False
    items = schema.get("items") if isinstance(schema, dict) else None
    item_schema = items if isinstance(items, dict) else None
    if not (isinstance(schema, dict) and schema.get("uniqueItems") is True):
        return all(_values_match(p, g, item_schema) for p, g in zip(predicted, gold, strict=True))
    # Set-like: pair each predicted element with a distinct gold one. Greedy pairing suffices because
    # the lenient relation is equality after normalising (strip/casefold, 1 == 1.0, defaults filled).
    unpaired = list(gold)
    for element in predicted:
        partner = next((i for i, g in enumerate(unpaired) if _values_match(element, g, item_schema)), None)
        if partner is None:
            return False
        del unpaired[partner]
    return True


def _objects_match(predicted: dict[str, Any], gold: dict[str, Any], schema: dict[str, Any] | None) -> bool:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    properties = properties if isinstance(properties, dict) else {}
    for key in predicted.keys() | gold.keys():
        property_schema = properties.get(key) if isinstance(properties.get(key), dict) else None
        if key in predicted and key in gold:
            if not _values_match(predicted[key], gold[key], property_schema):
                return False
        else:
            given = predicted[key] if key in predicted else gold[key]
            if not _omission_allowed(key, given, schema, property_schema):
                return False
    return True


def _omission_allowed(
    key: str, given: Any, schema: dict[str, Any] | None, property_schema: dict[str, Any] | None
) -> bool:
    """One side left out `key`: fine only for an optional parameter whose default the other side gave."""
    if schema is None or property_schema is None or "default" not in property_schema:
        return False
    required = schema.get("required")
    if isinstance(required, list) and key in required:
        return False
    return _values_match(given, property_schema["default"], property_schema)
