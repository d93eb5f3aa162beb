"""Which grammar a chat request decodes under: the OpenAI fields that ask for one, and the server's mode.

Pure: from the request body, the prompt built for it and `--constrained`:

- `response_format: {"type": "json_object"}` → any JSON object; `{"type": "json_schema", "json_schema":
  {"schema": {...}}}` → JSON valid against that schema. Always honoured (the request asks for it).
- tools offered with `tool_choice` `"required"` → the tool-call wrapper from the first token; a named
  function → the wrapper with that name. Always honoured.
- tools offered with `tool_choice` `"auto"` (or none): with `--constrained auto` the model may still
  answer in words, but once it opens the wrapper the name is one of the tools and the arguments fit
  that tool's JSON Schema; with `--constrained off` only when a tool says `"strict": true` (OpenAI's
  structured-outputs switch for function calling).
- anything else (a structured-track request, a CodeAct turn, project-format messages without these
  fields) decodes free.
"""

from __future__ import annotations

from typing import Any, Literal

from ray_app.engines.constrained import (
    ConstraintError,
    DecodingConstraint,
    json_constraint,
    toolcall_constraint,
)
from ray_app.prompts.agent_requests import AgentRequestError, offered_signatures

ConstrainedMode = Literal["auto", "off"]
CONSTRAINED_MODES: tuple[str, ...] = ("auto", "off")


class ConstraintRequestError(ValueError):
    """A field asking for a constraint that cannot be honoured; `param` names it (a 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def response_format_constraint(response_format: Any) -> DecodingConstraint | None:
    """OpenAI's `response_format` as a JSON constraint; None for text or no field."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json_constraint(None)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ConstraintRequestError(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {<a JSON Schema object>}}}',
                "response_format.json_schema",
            )
        return json_constraint(schema)
    raise ConstraintRequestError(
        'response_format type must be "text", "json_object" or "json_schema"', "response_format.type"
    )


def is_strict(tools: Any) -> bool:
    """Whether any offered function says `"strict": true`."""
    return isinstance(tools, list) and any(
        isinstance(tool, dict) and isinstance(tool.get("function"), dict) and tool["function"].get("strict") is True
        for tool in tools
    )


def request_constraint(body: dict[str, Any], prompt_source: str, mode: ConstrainedMode) -> DecodingConstraint | None:
    """The constraint this request decodes under, or None (free decoding)."""
    tools, tool_choice = body.get("tools"), body.get("tool_choice")
    try:
        from_format = response_format_constraint(body.get("response_format"))
        signatures = offered_signatures(tools, tool_choice) if prompt_source in ("toolcall", "project-format") else []
    except ConstraintError as error:
        raise ConstraintRequestError(str(error), "response_format") from None
    except AgentRequestError as error:
        raise ConstraintRequestError(str(error), error.param) from None
    if from_format is not None and signatures:
        raise ConstraintRequestError(
            "response_format asks for JSON while tools are offered: send one or the other", "response_format"
        )
    if from_format is not None:
        return from_format
    if not signatures:
        return None
    named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    forced = named is not None or tool_choice == "required"
    if not (forced or mode == "auto" or is_strict(tools)):
        return None
    try:
        return toolcall_constraint(signatures, "required" if forced else "auto", named)
    except ConstraintError as error:
        raise ConstraintRequestError(str(error), "tools") from None
