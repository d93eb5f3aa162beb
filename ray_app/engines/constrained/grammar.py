"""A constraint as grammar text (llguidance's Lark dialect): pure functions, no tokenizer, no model.

The wrapper's fixed text comes from `templates.json` (`tool_call_wrapper`), the one source of the
format, and JSON is written as the gold completions are (`readable_json`: `", "` and `": "`, no other
whitespace), so a constrained answer has the bytes a trained adapter learned to write.

- required / named tool: `start: call`, the wrapper from the first token.
- auto: `start: TEXT | call`, where `call` opens with a lazy lexeme (any text, then the trigger
  `<tool_call`): it matches at the first place the trigger appears, whichever tokens spell it (SmolLM2
  writes `<`, `tool`, `_`, `call`), and from there the wrapper must follow. Free text without the
  trigger may end anywhere.
- JSON: `start: %json {schema}`.

Objects that declare `properties` and say nothing of `additionalProperties` are closed
(`closed_schema`): an answer holds only keys the tool declares, so it is still valid against the
schema as given and a function with exactly those parameters can run it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ray_app.engines.constrained.constraints import DecodingConstraint, JsonConstraint, ToolCallConstraint
from ray_app.prompts.templates import template_parts
from ray_app.prompts.tool_call_format import TOOL_CALL_OPEN_PATTERN

# How arguments are written (llguidance's JSON options): as `readable_json` writes the gold completions.
# `lenient`: a keyword llguidance does not implement is ignored instead of refusing the request.
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
# allOf is left as given: closing each part would refuse the keys the other parts declare.
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
SUBSCHEMA_MAPS = ("$defs", "definitions", "patternProperties")


def wrapper_pieces() -> tuple[str, str, str]:
    """(`<tool_call name="`, `">`, `</tool_call>`): the wrapper's text around the name and the arguments."""
    head, after_name = template_parts("tool_call_wrapper", "name")
    _, tail = template_parts("tool_call_wrapper", "arguments")
    return head, after_name[: after_name.index("{{arguments}}")], tail


def wrapper_trigger() -> str:
    """`<tool_call`: the opening the parser recognises (TOOL_CALL_OPEN_PATTERN); under "auto", writing it
    commits the answer to the wrapper."""
    head, _, _ = wrapper_pieces()
    trigger = re.match(r"<[^\s>]+", head)
    if trigger is None or not TOOL_CALL_OPEN_PATTERN.fullmatch(trigger.group(0)):
        raise ValueError(f"tool_call_wrapper template {head!r} does not open the way the parser expects")
    return trigger.group(0)


def closed_schema(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists `properties` and does not
    say otherwise, at any depth (properties, items, combinators, definitions)."""
    if not isinstance(schema, dict):
        return schema
    result = dict(schema)
    if isinstance(result.get("properties"), dict):
        result["properties"] = {name: closed_schema(sub) for name, sub in result["properties"].items()}
        if "additionalProperties" not in result and "patternProperties" not in result:
            result["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        if isinstance(result.get(key), dict):
            result[key] = closed_schema(result[key])
    for key in SUBSCHEMA_LISTS:
        if isinstance(result.get(key), list):
            result[key] = [closed_schema(sub) for sub in result[key]]
    for key in SUBSCHEMA_MAPS:
        if isinstance(result.get(key), dict):
            result[key] = {name: closed_schema(sub) for name, sub in result[key].items()}
    return result


def json_rule(schema: dict[str, Any]) -> str:
    """`%json {...}`: the closed schema with the gold completions' JSON format."""
    return "%json " + json.dumps({**closed_schema(schema), "x-guidance": JSON_FORMAT}, ensure_ascii=False)


def literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def toolcall_grammar(constraint: ToolCallConstraint) -> str:
    head, after_name, tail = wrapper_pieces()
    tools = [tool for tool in constraint.tools if constraint.name in (None, tool.name)]
    branches = " | ".join(f"{literal(tool.name + after_name)} {json_rule(tool.parameters)}" for tool in tools)
    if constraint.forces_wrapper:
        return f"%llguidance {{}}\nstart: call\ncall: {literal(head)} ({branches}) {literal(tail)}\n"
    trigger = wrapper_trigger()
    return (
        "%llguidance {}\n"
        "start: TEXT | call\n"
        "TEXT: /(.|\\n)*/\n"
        f"call_opening[lazy]: TEXT {literal(trigger)}\n"
        f"call: call_opening {literal(head.removeprefix(trigger))} ({branches}) {literal(tail)}\n"
    )


def json_grammar(constraint: JsonConstraint) -> str:
    schema = constraint.schema if constraint.schema is not None else ANY_JSON_OBJECT
    return f"%llguidance {{}}\nstart: {json_rule(schema)}\n"


def constraint_grammar(constraint: DecodingConstraint) -> str:
    """The grammar text of a constraint (what `row_grammar.GrammarCompiler` compiles)."""
    if isinstance(constraint, ToolCallConstraint):
        return toolcall_grammar(constraint)
    if isinstance(constraint, JsonConstraint):
        return json_grammar(constraint)
    raise TypeError(f"not a decoding constraint: {type(constraint).__name__}")
