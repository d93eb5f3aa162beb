"""The toolcall answer format: exactly one `<tool_call name="TOOL">{json args}</tool_call>`.

Formatting and parsing live here and nowhere else: datasets, metrics, serving and the
teacher adapter all call these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ray_app.json_text import compact_json, readable_json, strict_json_loads
from ray_app.prompts.builders import openai_safe_tool_names
from ray_app.prompts.templates import render_template

# A tool name is anything but quotes and angle brackets (agents use dots, dashes, slashes).
TOOL_CALL_PATTERN = re.compile(r'<tool_call name="([^"<>]+)">(.*?)</tool_call>', re.DOTALL)
TOOL_CALL_OPEN_PATTERN = re.compile(r"<tool_call\b")


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: dict[str, Any]


class ToolCallFormatError(ValueError):
    """The text is not exactly what the toolcall track expects; the message says why."""


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """Render one call in the project's wrapper (the gold completion format)."""
    if not isinstance(arguments, dict):
        raise ToolCallFormatError(f"arguments of tool {name!r} must be a JSON object, got {type(arguments).__name__}")
    if not name or any(ch in name for ch in '"<>'):
        raise ToolCallFormatError(f"tool name {name!r} must be non-empty and contain no quotes or angle brackets")
    return render_template("tool_call_wrapper", name=name, arguments=readable_json(arguments))


def _parse_arguments(name: str, body: str) -> dict[str, Any]:
    try:
        arguments = strict_json_loads(body)
    except ValueError as error:
        raise ToolCallFormatError(f'arguments of <tool_call name="{name}"> are not valid JSON: {error}') from None
    if not isinstance(arguments, dict):
        raise ToolCallFormatError(
            f'arguments of <tool_call name="{name}"> must be a JSON object, got {type(arguments).__name__}'
        )
    return arguments


def parse_model_tool_call(text: str) -> ParsedToolCall:
    """Parse a model's answer: exactly one wrapper, text outside it tolerated, body a JSON object."""
    matches = TOOL_CALL_PATTERN.findall(text)
    opened = len(TOOL_CALL_OPEN_PATTERN.findall(text))
    if not matches:
        raise ToolCallFormatError('no <tool_call name="...">...</tool_call> wrapper found')
    if len(matches) > 1 or opened > 1:
        raise ToolCallFormatError(f"expected exactly one tool call, found {max(len(matches), opened)}")
    name, body = matches[0]
    return ParsedToolCall(name=name, arguments=_parse_arguments(name, body.strip()))


def parse_gold_tool_call(text: str) -> ParsedToolCall:
    """Parse a dataset completion: the whole text must be exactly one wrapper."""
    stripped = text.strip()
    match = TOOL_CALL_PATTERN.fullmatch(stripped)
    if match is None or len(TOOL_CALL_OPEN_PATTERN.findall(stripped)) != 1:
        raise ToolCallFormatError(
            'completion must be exactly one <tool_call name="NAME">{json object}</tool_call> with no other text'
        )
    name, body = match.groups()
    return ParsedToolCall(name=name, arguments=_parse_arguments(name, body.strip()))


def tool_calls_text(tool_calls: list[dict[str, Any]], tool_names: list[str]) -> str:
    """OpenAI `tool_calls` as the project's wrapper(s), one per line, under the tools' real names.

    A name recorded under its OpenAI-safe alias (`crm_search` for `crm.search`) is mapped back.
    Arguments that are not a JSON object stay raw inside the wrapper, so the metric counts the
    answer invalid instead of this function hiding the mistake; so do two or more calls.
    """
    real_name_of_alias = {alias: real for real, alias in openai_safe_tool_names(tool_names).items()}
    wrappers = []
    for call in tool_calls:
        call = call if isinstance(call, dict) else {}
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name = str(function.get("name") or "")
        name = real_name_of_alias.get(name, name)
        arguments = function.get("arguments", {})
        raw = arguments if isinstance(arguments, str) else compact_json(arguments)
        try:
            wrappers.append(format_tool_call(name, strict_json_loads(raw) if raw.strip() else {}))
        except ValueError:  # not JSON, not an object, or a name the wrapper cannot hold
            wrappers.append(render_template("tool_call_wrapper", name=name, arguments=raw))
    return "\n".join(wrappers)


def answer_text(content: str | None, tool_calls: list[dict[str, Any]], tool_names: list[str]) -> str:
    """The text an engine returns for an assistant message: its tool calls as wrappers, else its content."""
    if tool_calls:
        return tool_calls_text(tool_calls, tool_names)
    return content or ""
