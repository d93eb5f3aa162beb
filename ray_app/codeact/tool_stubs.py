"""Executable stand-ins for an agent's tools, generated from each tool's JSON Schema.

The CodeAct sandbox has no real CRM or weather service behind a tool: its Python function is a stub that
checks the call the way a strict API would (unknown or missing parameters, JSON types, `enum`, nested
object `properties`/`required`, array `items`), records every call, good or refused, as a
`ToolCallRecord`, and returns a deterministic result:

- the tool has a results table (multi-step tasks): the value stored under `canonical_json(arguments)`;
  a call the table has no entry for is refused, so a wrong first call cannot reach the gold answer;
- otherwise a small receipt derived from the arguments alone: {"tool", "status": "ok", "id", "echo"}.

The same call gives the same result in every process and on every run (sha256 of canonical JSON, never
Python's salted `hash()`, no clock, no randomness). A refused call raises `ToolCallError` with one line
naming the tool and the argument; that line is what the model sees as its observation.

Type rules are Python's, strict on purpose: `integer` takes an int but not a bool or 3.0, `number` takes
an int or a finite float, `array` takes a list or a tuple (recorded as a list). Keywords other than the
ones above (`minimum`, `pattern`, `format`, ...) are not checked. Pure: no I/O.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

from ray_app.codeact.records import ToolCallRecord, ToolSpec
from ray_app.json_text import canonical_json


class ToolCallError(Exception):
    """A tool refused its call: bad arguments, or no fixed result for them. The message is one line."""


def to_json_value(value: Any, where: str = "value") -> Any:
    """`value` as plain JSON data (tuples become lists); ValueError naming the place of anything else.

    Why strict: records are written as JSON and compared as canonical JSON, so a set, a NaN or an int
    dict key would either fail later or silently change (json turns {1: 2} into {"1": 2}).
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}: JSON has no NaN or infinity")
        return value
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r}: JSON object keys must be strings")
            converted[key] = to_json_value(item, f"{where}.{key}")
        return converted
    raise ValueError(f"{where} is a {type(value).__name__}: not a JSON value (use str, number, bool, None, list, dict)")


def tool_stub(spec: ToolSpec, calls: list[ToolCallRecord]) -> Callable[..., Any]:
    """The Python function the model's code calls for `spec`; each call appends one record to `calls`."""
    name = spec.python_name

    def stub(*args: Any, **kwargs: Any) -> Any:
        arguments, problem = _bind(spec.parameters, args, kwargs)
        if problem is None:
            problem = _arguments_problem(arguments, spec.parameters)
        if problem is None:
            try:
                arguments = to_json_value(arguments, "arguments")
            except ValueError as error:
                problem = str(error)
        if problem is None and spec.results is not None and canonical_json(arguments) not in spec.results:
            problem = f"no result for these arguments: {_shown(arguments, limit=200)}"
        if problem is not None:
            message = f"{name}(): {problem}"
            calls.append(ToolCallRecord(name=spec.name, arguments=_recordable(arguments), error=message))
            raise ToolCallError(message)
        calls.append(ToolCallRecord(name=spec.name, arguments=arguments, error=None))
        if spec.results is not None:
            return copy.deepcopy(spec.results[canonical_json(arguments)])  # the code may mutate what it gets
        return _receipt(spec.name, arguments)

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = spec.description
    return stub


def _receipt(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(canonical_json({"tool": tool, "arguments": arguments}).encode()).hexdigest()
    return {"tool": tool, "status": "ok", "id": digest[:8], "echo": copy.deepcopy(arguments)}


def parameter_order(parameters: dict[str, Any]) -> list[str]:
    """The signature's parameter order (`python_signatures` shows it): required ones, then optional
    ones, each in schema order. Python wants defaults last, so this can differ from the schema's order
    (2 of the 1,269 committed tools); positional arguments bind in this order."""
    properties = parameters.get("properties") or {}
    required = parameters.get("required") or []
    return [name for name in properties if name in required] + [name for name in properties if name not in required]


def _without_omitted(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """An optional argument passed as None is left out: the signature shows optional ones as `= None`."""
    properties, required = schema.get("properties") or {}, set(schema.get("required") or [])

    def allows_null(key: str) -> bool:
        kind = (properties.get(key) or {}).get("type")
        return kind == "null" or (isinstance(kind, list) and "null" in kind)

    return {
        key: value
        for key, value in arguments.items()
        if not (value is None and key in properties and key not in required and not allows_null(key))
    }


def _bind(schema: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Keyword arguments by name; positional ones in the signature's order (`parameter_order`)."""
    names = parameter_order(schema)
    arguments = dict(zip(names, args, strict=False))
    if len(args) > len(names):
        for index in range(len(names), len(args)):
            arguments[f"<positional {index}>"] = args[index]
        return arguments, f"takes {len(names)} arguments ({', '.join(names) or 'none'}), got {len(args)} positional"
    for key, value in kwargs.items():
        if key in arguments:
            return arguments, f"got multiple values for argument {key!r}"
        arguments[key] = value
    return _without_omitted(schema, arguments), None


def _arguments_problem(arguments: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """Unknown and missing arguments first (what a Python signature checks), then each argument's schema."""
    properties: dict[str, Any] = schema.get("properties") or {}
    if schema.get("additionalProperties", False) is False:  # a tool's parameters are closed unless it says not
        for key in arguments:
            if key not in properties:
                return f"unknown argument {key!r} (parameters: {', '.join(properties) or 'none'})"
    for key in schema.get("required") or []:
        if key not in arguments:
            return f"missing required argument {key!r}"
    for key, value in arguments.items():
        problem = _schema_problem(value, properties.get(key) or {}, key)
        if problem:
            return problem
    return None


def _schema_problem(value: Any, schema: dict[str, Any], path: str) -> str | None:
    """The first way `value` breaks `schema`, as text naming the argument's path; None when it fits."""
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_has_json_type(value, kind) for kind in allowed):
            return f"{path!r} must be {' or '.join(allowed)}, got {_shown(value)} ({_json_type_name(value)})"
    if "enum" in schema:
        options = schema["enum"]
        if _canonical_or_none(value) not in {_canonical_or_none(option) for option in options}:
            return f"{path!r} must be one of {json.dumps(options, ensure_ascii=False)}, got {_shown(value)}"
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                return f"{path!r} is missing the required key {key!r}"
        for key, item in value.items():
            if key not in properties and schema.get("additionalProperties") is False:
                return f"{path!r} has the unknown key {key!r} (keys: {', '.join(properties) or 'none'})"
            problem = _schema_problem(item, properties.get(key) or {}, f"{path}.{key}")
            if problem:
                return problem
    if isinstance(value, list | tuple) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problem = _schema_problem(item, schema["items"], f"{path}[{index}]")
            if problem:
                return problem
    return None


def _has_json_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "null":
        return value is None
    return True  # a type this stub does not know is not held against the model's call


def _json_type_name(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _has_json_type(value, kind):
            return kind
    return type(value).__name__


def _canonical_or_none(value: Any) -> str | None:
    try:
        return canonical_json(to_json_value(value))
    except ValueError:
        return None


def _shown(value: Any, limit: int = 80) -> str:
    """A value as the model wrote it (JSON where possible), cut so one bad argument keeps the message one line."""
    try:
        text = json.dumps(to_json_value(value), ensure_ascii=False)
    except ValueError:
        text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _recordable(arguments: dict[str, Any]) -> dict[str, Any]:
    """A refused call's arguments as JSON: what is not JSON is recorded as its repr."""
    recorded = {}
    for key, value in arguments.items():
        try:
            recorded[key] = to_json_value(value)
        except ValueError:
            recorded[key] = repr(value)
    return recorded
