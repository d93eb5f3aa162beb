"""Prompt and chat-message building for both tracks (pure functions, one source of truth).

A tool signature is an OpenAI function object `{"name", "description", "parameters"}` whose
`parameters` is JSON Schema. xLAM rows, trace exports and Serve requests are all normalised to it,
so a prompt built from any of them has the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ray_app.json_text import compact_json, strict_json_loads
from ray_app.prompts.templates import load_templates, render_template, template_parts

OPENAI_TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PromptFormatError(ValueError):
    """A prompt or tool signature does not have the shape the project builds."""


def tool_signature(tool: dict[str, Any]) -> dict[str, Any]:
    """Normalise an OpenAI tool (`{"type": "function", "function": {...}}` or the bare function)."""
    function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise PromptFormatError(f"not an OpenAI function tool (needs function.name): {compact_json(tool)[:200]}")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise PromptFormatError(f"tool {function['name']!r}: parameters must be a JSON Schema object")
    return {"name": function["name"], "description": function.get("description") or "", "parameters": parameters}


def openai_tool(signature: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The OpenAI `tools` entry for a signature (optionally under an OpenAI-safe alias)."""
    return {"type": "function", "function": {**signature, "name": name or signature["name"]}}


def openai_safe_tool_names(names: list[str]) -> dict[str, str]:
    """Map each tool name to a name OpenAI-style APIs accept (`^[A-Za-z0-9_-]{1,64}$`).

    Names that already fit map to themselves; others (dots, slashes, spaces) get `_` and, on a
    collision, a numeric suffix. The mapping is deterministic, so it can be inverted per request.
    """
    aliases: dict[str, str] = {}
    taken = {name for name in names if OPENAI_TOOL_NAME_PATTERN.match(name)}
    for name in names:
        if OPENAI_TOOL_NAME_PATTERN.match(name):
            aliases[name] = name
            continue
        base = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:60] or "tool"
        alias, suffix = base, 2
        while alias in taken:
            alias, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(alias)
        aliases[name] = alias
    return aliases


def parameter_types(signature: dict[str, Any]) -> dict[str, str]:
    """`{param: "integer"}`, with "(optional)" for parameters not in `required`."""
    parameters = signature["parameters"]
    required = set(parameters.get("required", []))
    described = {}
    for name, schema in parameters.get("properties", {}).items():
        type_name = json_type_name(schema)
        described[name] = type_name if name in required else f"{type_name} (optional)"
    return described


def json_type_name(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), dict) and schema["items"]:
        return f"array of {json_type_name(schema['items'])}"
    if kind:
        return str(kind)
    if "anyOf" in schema:
        return " or ".join(json_type_name(option) for option in schema["anyOf"])
    return "any"


def structured_prompt(signature: dict[str, Any], query: str) -> str:
    """Instruction to return the named tool's arguments as one JSON object, then the user text."""
    return render_template(
        "structured",
        tool_name=signature["name"],
        parameters=compact_json(parameter_types(signature)),
        query=query,
    )


def structured_prompt_from_instruction(instruction: str, query: str) -> str:
    """Structured prompt for a trace generation: the agent's own instruction, then the user text."""
    if not instruction.strip():
        return query
    return render_template("structured_from_trace", instruction=instruction.strip(), query=query)


def toolcall_prompt(signatures: list[dict[str, Any]], query: str) -> str:
    """Instruction + one compact JSON signature per line + the user text."""
    if not signatures:
        raise PromptFormatError("a toolcall prompt needs at least one tool signature")
    tools_block = "\n".join(compact_json(signature) for signature in signatures)
    return render_template("toolcall", tools=tools_block, query=query)


@dataclass(frozen=True)
class ToolcallPrompt:
    signatures: list[dict[str, Any]]
    query: str


def parse_toolcall_prompt(prompt: str) -> ToolcallPrompt:
    """Recover the tool signatures and user text from a prompt built by `toolcall_prompt`."""
    head, tail = template_parts("toolcall", "tools")
    query_head, query_tail = tail.split("{{query}}")
    if not prompt.startswith(head) or not prompt.endswith(query_tail):
        raise PromptFormatError("prompt was not built from the toolcall template")
    body = prompt[len(head) : len(prompt) - len(query_tail)]
    # Signatures are compact JSON (no raw newlines), so the first query_head ends the block.
    tools_block, separator, query = body.partition(query_head)
    if not separator:
        raise PromptFormatError("toolcall prompt has no request section")
    try:
        signatures = [tool_signature(strict_json_loads(line)) for line in tools_block.split("\n")]
    except ValueError as error:
        raise PromptFormatError(f"toolcall prompt has a tool line that is not a JSON signature: {error}") from None
    return ToolcallPrompt(signatures=signatures, query=query)


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """The chat messages every engine, the trainer and the server send for a row's prompt."""
    return [
        {"role": "system", "content": load_templates()["system"]},
        {"role": "user", "content": prompt},
    ]
