"""What a request asks its answer to fit: the records the engine takes, one per row (or none).

- `ToolCallConstraint`: the toolcall track's wrapper `<tool_call name="NAME">ARGS</tool_call>`, NAME one
  of the offered tools and ARGS valid JSON for that tool's parameters. `choice="auto"`: the model may
  answer in plain text, but once it opens the wrapper the rest is constrained; `"required"`: the
  wrapper from the first token; `name=...`: the wrapper with that tool's name (OpenAI's named
  `tool_choice`).
- `JsonConstraint`: the structured track's one JSON value valid against a JSON Schema, or any JSON
  object when there is none (OpenAI's `response_format` `json_object`).

Both are frozen and hashable (schemas are kept as their compact JSON text), so a compiled grammar
is cached by the constraint itself. They hold no library objects: Serve and evaluation build them
from requests and rows; `grammar.py` turns one into grammar text, `row_grammar.py` into token masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ray_app.json_text import compact_json

ToolChoice = Literal["auto", "required"]


class ConstraintError(ValueError):
    """A constraint that cannot be built or compiled; the message names the tool or schema and why."""


@dataclass(frozen=True)
class ToolParameters:
    name: str
    parameters_json: str  # the tool's JSON Schema `parameters`, compact, key order kept

    @classmethod
    def from_signature(cls, signature: dict[str, Any]) -> ToolParameters:
        """From an OpenAI function object (`{"name", "parameters", ...}`, as `prompts.tool_signature` returns)."""
        parameters = signature.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ConstraintError(f"tool {signature.get('name')!r}: parameters must be a JSON Schema object")
        return cls(str(signature.get("name") or ""), compact_json(parameters))

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.parameters_json)


@dataclass(frozen=True)
class ToolCallConstraint:
    tools: tuple[ToolParameters, ...]
    choice: ToolChoice = "auto"
    name: str | None = None  # a named function: the wrapper with this name is forced (whatever `choice`)

    def __post_init__(self) -> None:
        names = [tool.name for tool in self.tools]
        if not names:
            raise ConstraintError("a tool-call constraint needs at least one tool")
        bad = [name for name in names if not name or any(character in name for character in '"<>')]
        if bad:
            raise ConstraintError(f"tool names {bad} cannot sit in the wrapper (empty, or quotes/angle brackets)")
        if len(set(names)) != len(names):
            raise ConstraintError(f"tool names must be unique, got {names}")
        if self.choice not in ("auto", "required"):
            raise ConstraintError(f"tool choice must be 'auto' or 'required', got {self.choice!r}")
        if self.name is not None and self.name not in names:
            raise ConstraintError(f"tool choice names {self.name!r}, which is not among the offered tools {names}")

    @property
    def forces_wrapper(self) -> bool:
        return self.choice == "required" or self.name is not None

    def describe(self) -> dict[str, Any]:
        return {"kind": "tool_call", "choice": self.choice, "name": self.name, "tools": [t.name for t in self.tools]}


@dataclass(frozen=True)
class JsonConstraint:
    schema_json: str | None = None  # compact JSON Schema; None: any JSON object

    @property
    def schema(self) -> dict[str, Any] | None:
        return None if self.schema_json is None else json.loads(self.schema_json)

    def describe(self) -> dict[str, Any]:
        return {"kind": "json", "schema": self.schema is not None}


DecodingConstraint = ToolCallConstraint | JsonConstraint


def toolcall_constraint(
    signatures: list[dict[str, Any]], choice: ToolChoice = "auto", name: str | None = None
) -> ToolCallConstraint:
    """The wrapper over these tools (OpenAI function objects): `choice` auto or required, or a named tool."""
    return ToolCallConstraint(tuple(ToolParameters.from_signature(signature) for signature in signatures), choice, name)


def json_constraint(schema: dict[str, Any] | None = None) -> JsonConstraint:
    """One JSON value valid against `schema`; without one, any JSON object."""
    if schema is not None and not isinstance(schema, dict):
        raise ConstraintError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    return JsonConstraint(None if schema is None else compact_json(schema))
