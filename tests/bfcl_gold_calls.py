"""Hand-written gold tool calls and their perturbations, for the BFCL agreement test.

The tools are OpenAI function objects with JSON Schema parameters, as the toolcall prompts carry them;
the gold arguments are what a careful person would write for a plausible request.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

STRING, INTEGER, NUMBER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def tool(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"name": name, "description": f"{name.replace('_', ' ')}.", "parameters": parameters}


def strings(**extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": STRING, **extra}


GOLD_CALLS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        tool("find_recipes", {"query": STRING, "diet": STRING, "max_minutes": INTEGER,
                              "servings": {**INTEGER, "default": 2}}, ["query"]),
        {"query": "pancakes", "diet": "Gluten-free", "max_minutes": 30},
    ),
    (
        tool("get_weather", {"location": STRING, "days": INTEGER, "units": {**STRING, "default": "metric"}},
             ["location", "days"]),
        {"location": "New York, NY", "days": 3},
    ),
    (
        tool("book_flight", {"origin": STRING, "destination": STRING, "date": STRING, "passengers": INTEGER,
                             "cabin": {**STRING, "default": "economy"},
                             "flexible_dates": {**BOOLEAN, "default": False}},
             ["origin", "destination", "date", "passengers"]),
        {"origin": "SFO", "destination": "JFK", "date": "2024-04-01", "passengers": 2, "cabin": "business"},
    ),
    (
        tool("convert_currency", {"amount": NUMBER, "from_currency": STRING, "to_currency": STRING},
             ["amount", "from_currency", "to_currency"]),
        {"amount": 150.5, "from_currency": "USD", "to_currency": "EUR"},
    ),
    (
        tool("plan_route", {"waypoints": strings(), "avoid_tolls": {**BOOLEAN, "default": False},
                            "mode": {**STRING, "default": "driving"}}, ["waypoints"]),
        {"waypoints": ["Paris", "Lyon", "Marseille"], "avoid_tolls": True},
    ),
    (
        tool("create_event", {"title": STRING, "start": STRING, "duration_minutes": INTEGER, "attendees": strings(),
                              "reminder": {"type": "object", "properties": {
                                  "method": STRING, "minutes_before": {**INTEGER, "default": 10},
                                  "channels": strings()}, "required": ["method"]}},
             ["title", "start", "duration_minutes"]),
        {"title": "Team sync", "start": "2024-05-01T10:00", "duration_minutes": 45,
         "attendees": ["ana@example.com", "li@example.com"],
         "reminder": {"method": "email", "minutes_before": 15, "channels": ["Email", "push"]}},
    ),
    (
        tool("compute_statistics", {"values": {"type": "array", "items": NUMBER}, "metric": STRING,
                                    "percentiles": {"type": "array", "items": INTEGER},
                                    "round_to": {**INTEGER, "default": 2}}, ["values", "metric"]),
        {"values": [1.5, 2.25, 3.0], "metric": "percentile", "percentiles": [25, 75]},
    ),
    (
        tool("search_hotels", {"city": STRING, "check_in": STRING, "nights": INTEGER,
                               "guests": {"type": "object", "properties": {
                                   "adults": INTEGER, "children": {**INTEGER, "default": 0}}, "required": ["adults"]},
                               "amenities": strings(uniqueItems=True), "max_price": NUMBER},
             ["city", "check_in", "nights", "guests"]),
        {"city": "Paris", "check_in": "2024-06-10", "nights": 3, "guests": {"adults": 2, "children": 1},
         "amenities": ["wifi", "pool"], "max_price": 200},
    ),
    (
        tool("geocode", {"address": STRING, "country_code": STRING}, ["address"]),
        {"address": "Hauptstraße 5, Berlin", "country_code": "DE"},
    ),
    (
        tool("update_profile", {"user_id": INTEGER, "display_name": STRING,
                                "preferences": {"type": "object", "properties": {
                                    "language": STRING, "notifications": {"type": "object", "properties": {
                                        "email": BOOLEAN, "sms": BOOLEAN, "quiet_hours": STRING}}}}}, ["user_id"]),
        {"user_id": 42, "display_name": "O'Brien",
         "preferences": {"language": "en", "notifications": {"email": True, "sms": False, "quiet_hours": "22-07"}}},
    ),
    (
        tool("add_to_cart", {"items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": STRING, "quantity": INTEGER}, "required": ["sku", "quantity"]}}, "coupon": STRING}, ["items"]),
        {"items": [{"sku": "A-100", "quantity": 2}, {"sku": "B-7", "quantity": 1}]},
    ),
    (
        tool("set_thermostat", {"temperature": NUMBER, "unit": {**STRING, "default": "celsius"}, "zone": STRING},
             ["temperature"]),
        {"temperature": 21.5, "unit": "celsius"},
    ),
]  # fmt: skip

Path = tuple[str | int, ...]


def nodes(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every value inside the arguments with its path (objects and arrays too), depth first."""
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        yield from nodes(child, (*path, key))


def replaced(arguments: dict[str, Any], path: Path, new: Any) -> dict[str, Any]:
    changed = copy.deepcopy(arguments)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return changed


def without(arguments: dict[str, Any], path: Path) -> dict[str, Any]:
    changed = copy.deepcopy(arguments)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return changed


def string_variants(text: str) -> dict[str, str]:
    return {
        "upper case": text.upper(),
        "title case": text.title(),
        "surrounding spaces": f"  {text} ",
        "spaces removed": text.replace(" ", ""),
        "spaces as hyphens": text.replace(" ", "-"),
        "trailing period": text + ".",
        "commas removed": text.replace(",", ""),
        "semicolon added": text.replace(",", ";") if "," in text else text + ";",
        "tab for space": text.replace(" ", "\t") if " " in text else "\t" + text,
        "quote swapped": text.replace("'", '"'),
        "word changed": text + "x",
        "truncated": text[:-1],
    }


def number_variants(number: int | float) -> dict[str, Any]:
    variants: dict[str, Any] = {"plus one": number + 1, "as string": str(number), "as bool": True}
    if isinstance(number, int):
        variants["int as float"] = float(number)
    else:
        variants["float as int"] = int(number)  # 3.0 -> 3 (same value) or 150.5 -> 150 (another)
    return variants


def sample_value(schema: dict[str, Any]) -> Any:
    """A value of the schema's type that is not its default (for adding an optional parameter)."""
    samples = {"string": "other", "integer": 7, "number": 7.5, "boolean": not schema.get("default", False)}
    return samples.get(schema["type"], [] if schema["type"] == "array" else {})


def call_variants(tool: dict[str, Any], gold: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(label, tool name, arguments) for the gold call and its perturbations."""
    name, properties = tool["name"], tool["parameters"]["properties"]
    yield "gold", name, gold
    yield "wrong tool name", name + "_v2", gold
    for path, value in nodes(gold):
        where = "/".join(map(str, path))
        if isinstance(value, str):
            for label, new in string_variants(value).items():
                if new != value:
                    yield f"{where} {label}", name, replaced(gold, path, new)
        elif isinstance(value, bool):
            for label, new in {"flipped": not value, "as int": int(value), "as string": str(value).lower()}.items():
                yield f"{where} {label}", name, replaced(gold, path, new)
        elif isinstance(value, int | float):
            for label, new in number_variants(value).items():
                yield f"{where} {label}", name, replaced(gold, path, new)
        elif isinstance(value, list) and path:
            if len(value) > 1:
                yield f"{where} reversed", name, replaced(gold, path, value[::-1])
            yield f"{where} last dropped", name, replaced(gold, path, value[:-1])
            yield f"{where} first repeated", name, replaced(gold, path, [*value, value[0]])
        elif isinstance(value, dict) and path:
            for key in value:
                yield f"{where}/{key} dropped", name, without(gold, (*path, key))
            yield f"{where} extra key", name, replaced(gold, (*path, "note"), "x")
        if len(path) == 1:
            yield f"{where} dropped", name, without(gold, path)
            yield f"{where} key renamed", name, {**without(gold, path), where.title(): value}
    for key, schema in properties.items():
        if key not in gold:
            if "default" in schema:
                yield f"{key} added at its default", name, {**gold, key: schema["default"]}
            yield f"{key} added with another value", name, {**gold, key: sample_value(schema)}
    yield "extra parameter", name, {**gold, "debug": True}
    shouted = gold
    for path, value in nodes(gold):
        if isinstance(value, str):
            shouted = replaced(shouted, path, value.upper().replace(" ", "-"))
    yield "every string upper-cased and hyphenated", name, shouted
