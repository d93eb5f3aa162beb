"""What a test row's answer must fit under `--decoding constrained`, read from the row's own prompt.

- toolcall: the tool-call wrapper over the tools the prompt lists (`prompts.parse_toolcall_prompt`, the
  parser the lenient metric uses), choice "required": the track's answer is always exactly one call.
- structured: one JSON object valid against the parameters the instruction lists. The seed's structured
  prompt shows them as `Parameters (name: JSON type): {"city":"string","days":"integer (optional)"}`
  (`prompts.parameter_types`); `instruction_schema` reads that line back into a JSON Schema (types,
  required = not "(optional)"; the grammar closes the object to those keys). A prompt without that line
  (an agent's own instruction, from traces) gets any JSON object.

Pure functions: the driver builds every row's constraint before compute (a prompt that cannot give one
stops the run with `file:line`), and each actor builds them again from the prompts it is sent.
"""

from __future__ import annotations

import re
from typing import Any

from ray_app.data.rows import Row, Track
from ray_app.engines.constrained import DecodingConstraint, json_constraint, toolcall_constraint
from ray_app.json_text import strict_json_loads
from ray_app.prompts import parse_toolcall_prompt
from ray_app.prompts.templates import template_text

OPTIONAL_SUFFIX = " (optional)"  # what `prompts.parameter_types` appends to a parameter not in `required`
JSON_TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")
ARRAY_OF = "array of "


class RowConstraintError(ValueError):
    """A row whose prompt cannot give a constraint; the message names the split file and line."""


def schema_of_type_name(name: str) -> dict[str, Any]:
    """The JSON Schema a type name of `prompts.json_type_name` stands for: `array of X` (binding loosest, so
    `array of integer or number` is an array of either), `A or B`, one JSON type, `any` or an unknown name
    (no constraint)."""
    if name.startswith(ARRAY_OF):
        return {"type": "array", "items": schema_of_type_name(name.removeprefix(ARRAY_OF))}
    options = name.split(" or ")
    if len(options) > 1:
        return {"anyOf": [schema_of_type_name(option) for option in options]}
    return {"type": name} if name in JSON_TYPES else {}


def structured_prompt_pattern() -> re.Pattern[str]:
    """The seed's structured template (templates.json) with its three placeholders as groups."""
    text = re.escape(template_text("structured"))
    for placeholder, group in (("tool_name", ".*?"), ("parameters", "[^\n]*"), ("query", ".*")):
        text = text.replace(re.escape("{{" + placeholder + "}}"), f"(?P<{placeholder}>{group})")
    return re.compile(text, re.DOTALL)


def instruction_schema(prompt: str) -> dict[str, Any] | None:
    """The JSON Schema of the object a structured prompt asks for, or None when it lists no parameters."""
    found = structured_prompt_pattern().fullmatch(prompt)
    if found is None:
        return None
    try:
        listed = strict_json_loads(found.group("parameters"))
    except ValueError:
        return None
    if not isinstance(listed, dict) or not all(isinstance(name, str) for name in listed.values()):
        return None
    properties = {key: schema_of_type_name(name.removesuffix(OPTIONAL_SUFFIX)) for key, name in listed.items()}
    required = [key for key, name in listed.items() if not name.endswith(OPTIONAL_SUFFIX)]
    return {"type": "object", "properties": properties, "required": required}


def merged_signatures(signatures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One signature per tool name, in first-seen order: xLAM prompts can list one name several times with
    different parameters (4 train rows), and a call to that name is right when it fits any of them."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for signature in signatures:
        listed = by_name.setdefault(signature["name"], [])
        if signature["parameters"] not in listed:
            listed.append(signature["parameters"])
    return [
        {"name": name, "parameters": options[0] if len(options) == 1 else {"anyOf": options}}
        for name, options in by_name.items()
    ]


def row_constraint(track: Track, prompt: str) -> DecodingConstraint:
    """The constraint of one row (PromptFormatError / ConstraintError when its prompt cannot give one)."""
    if track == "toolcall":
        return toolcall_constraint(merged_signatures(parse_toolcall_prompt(prompt).signatures), "required")
    return json_constraint(instruction_schema(prompt))


def split_constraints(track: Track, rows: list[Row], source: str) -> list[DecodingConstraint]:
    """Every row's constraint, in split order; the first row that cannot give one raises `source:line: why`."""
    constraints = []
    for line, row in enumerate(rows, start=1):
        try:
            constraints.append(row_constraint(track, row.prompt))
        except ValueError as error:
            raise RowConstraintError(f"{source}:{line}: no constraint for this row ({error})") from None
    return constraints


def constraint_description(track: Track) -> str:
    """How this track's rows are constrained, in words (metrics.json `engine.constraint`, the report)."""
    if track == "toolcall":
        return "tool-call wrapper required, over the tools the prompt lists (llguidance)"
    return "one JSON object with the parameters the instruction lists, else any JSON object (llguidance)"


def constrained_identity(track: Track) -> dict[str, Any]:
    """What a constrained run's answers also depend on (its run key): the rule that builds each row's
    constraint, and the grammar library's version (its masks decide which tokens the argmax may take)."""
    from importlib import metadata

    return {
        "decoding": "constrained",
        "constraint": constraint_description(track),
        "llguidance": metadata.version("llguidance"),
    }


def constrained_engine(track: Track) -> dict[str, str]:
    """metrics.json `engine` of a constrained run: how its answers were constrained."""
    return {"decoding": "greedy, constrained (engines/constrained)", "constraint": constraint_description(track)}
