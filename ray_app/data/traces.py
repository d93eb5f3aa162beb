"""Agent traces (Langfuse exports) → structured and toolcall rows in the project's prompt format.

A trace is a JSON object shaped like Langfuse's `GET /api/public/traces/{id}`: trace fields plus an
`observations` list. A trace belongs to agent ID when `metadata.agentId` or `metadata.agent_id`
equals ID, when it has the tag `agent:ID`, or when its `name` is ID.

Each GENERATION observation of a matching trace becomes at most one row:
- input: a list of chat messages, or `{"messages": [...], "tools": [...]}` (the Langfuse OpenAI
  integration); optional system messages and exactly one user message (multi-turn is skipped);
- output: a string, or an assistant message with `content` and OpenAI `tool_calls`;
- exactly one tool call → toolcall row: prompt = toolcall template over the offered tools and the
  user text, completion = the `<tool_call>` wrapper (a call recorded under an OpenAI-safe alias of a
  dotted tool name is mapped back to the tool's real name);
- no tool call and a JSON object/array answer → structured row: prompt = the agent's own system
  instruction (the project's system message is dropped) + the user text, completion = the JSON;
- anything else is skipped and counted by reason, as is an `observations` item that is not an object.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ray_app.data.rows import TRACKS, Row, Track
from ray_app.data.splits import Candidate
from ray_app.json_text import readable_json, strict_json_loads
from ray_app.prompts import (
    PromptFormatError,
    ToolCallFormatError,
    format_tool_call,
    load_templates,
    openai_safe_tool_names,
    structured_prompt_from_instruction,
    tool_signature,
    toolcall_prompt,
)


class SkipGeneration(Exception):
    """This generation cannot become a row; the message is the reason counted in the summary."""


@dataclass
class TraceConversion:
    traces_read: int = 0
    traces_matched: int = 0
    generations_seen: int = 0
    candidates: dict[Track, list[Candidate]] = field(default_factory=lambda: {track: [] for track in TRACKS})
    skipped: Counter = field(default_factory=Counter)


def trace_belongs_to_agent(trace: dict[str, Any], agent_id: str) -> bool:
    metadata = trace.get("metadata") if isinstance(trace.get("metadata"), dict) else {}
    if agent_id in (metadata.get("agentId"), metadata.get("agent_id")):
        return True
    if f"agent:{agent_id}" in (trace.get("tags") or []):
        return True
    return trace.get("name") == agent_id


def _maybe_json(value: Any) -> Any:
    """The v2 observations API returns input/output as raw strings; decode them when they are JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text_content(content: Any) -> str:
    """Message content as text: a string, or OpenAI content parts of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            else:
                raise SkipGeneration("non-text message content (images, audio, files)")
        return "".join(texts)
    if content is None:
        return ""
    raise SkipGeneration("message content is neither text nor content parts")


def generation_messages_and_tools(raw_input: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Normalise the two input shapes to (messages, OpenAI tools)."""
    value = _maybe_json(raw_input)
    if isinstance(value, list):
        messages, tools = value, []
    elif isinstance(value, dict) and isinstance(value.get("messages"), list):
        messages, tools = value["messages"], value.get("tools") or []
    else:
        raise SkipGeneration("input is not chat messages")
    if not all(isinstance(message, dict) and "role" in message for message in messages):
        raise SkipGeneration("input is not chat messages")
    return messages, tools


def instruction_and_user_text(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """System instruction (minus the project's own system message) and the single user message."""
    roles = [message["role"] for message in messages]
    if any(role not in ("system", "developer", "user") for role in roles) or roles.count("user") > 1:
        raise SkipGeneration("multi-turn input (assistant or tool messages)")
    if roles.count("user") == 0:
        raise SkipGeneration("no user message")
    project_system = load_templates()["system"]
    instructions = [
        _text_content(message.get("content")).strip()
        for message in messages
        if message["role"] in ("system", "developer")
    ]
    instruction = "\n\n".join(text for text in instructions if text and text != project_system)
    user_text = _text_content(next(m for m in messages if m["role"] == "user").get("content")).strip()
    if not user_text:
        raise SkipGeneration("empty user message")
    return instruction, user_text


def _decoded_output(raw_output: Any) -> Any:
    """Decode a string output only when it is a serialised assistant message or response.

    A plain string answer such as '{"city": "Oslo"}' is the model's text and must stay text.
    """
    decoded = _maybe_json(raw_output)
    if isinstance(decoded, dict) and ({"role", "tool_calls", "choices"} & set(decoded)):
        return decoded
    return raw_output


def generation_answer(raw_output: Any) -> tuple[str, list[dict[str, Any]]]:
    """(text content, tool calls) of a generation's output."""
    value = _decoded_output(raw_output)
    if isinstance(value, dict) and "choices" in value and value["choices"]:
        value = value["choices"][0].get("message", {})  # a raw chat.completions response
    if isinstance(value, str):
        return value, []
    if isinstance(value, dict):
        calls = value.get("tool_calls") or []
        if not isinstance(calls, list):
            raise SkipGeneration("tool_calls is not a list")
        content = value.get("content")
        return (_text_content(content) if content is not None else ""), calls
    if value is None:
        raise SkipGeneration("no output")
    raise SkipGeneration("output is neither text nor an assistant message")


def toolcall_row(tools: list[dict[str, Any]], user_text: str, call: dict[str, Any]) -> Row:
    if not tools:
        raise SkipGeneration("tool call but no tools in the input")
    try:
        signatures = [tool_signature(tool) for tool in tools]
    except PromptFormatError:
        raise SkipGeneration("a tool is not an OpenAI function spec") from None
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name = function.get("name")
    names = [signature["name"] for signature in signatures]
    real_name_of_alias = {alias: real for real, alias in openai_safe_tool_names(names).items()}
    if name not in names:
        if name not in real_name_of_alias:
            raise SkipGeneration("tool call names a tool that was not offered")
        name = real_name_of_alias[name]
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = strict_json_loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise SkipGeneration("tool call arguments are not valid JSON") from None
    if not isinstance(arguments, dict):
        raise SkipGeneration("tool call arguments are not a JSON object")
    try:
        return Row(toolcall_prompt(signatures, user_text), format_tool_call(name, arguments))
    except ToolCallFormatError as error:
        raise SkipGeneration(f"tool call cannot be wrapped: {error}") from None


def structured_row(instruction: str, user_text: str, content: str) -> Row:
    try:
        answer = strict_json_loads(content.strip())
    except ValueError:
        raise SkipGeneration("answer is not JSON (prose, markdown fence or empty)") from None
    if not isinstance(answer, dict | list):
        raise SkipGeneration("answer is JSON but not an object or array")
    return Row(structured_prompt_from_instruction(instruction, user_text), readable_json(answer))


def generation_row(generation: dict[str, Any]) -> tuple[Track, Candidate]:
    """The row one GENERATION becomes, or SkipGeneration with the reason."""
    if generation.get("level") == "ERROR":
        raise SkipGeneration("generation failed (level ERROR)")
    messages, tools = generation_messages_and_tools(generation.get("input"))
    instruction, user_text = instruction_and_user_text(messages)
    content, calls = generation_answer(generation.get("output"))
    if len(calls) > 1:
        raise SkipGeneration("more than one tool call")
    if len(calls) == 1:
        return "toolcall", Candidate(user_text, toolcall_row(tools, user_text, calls[0]))
    return "structured", Candidate(user_text, structured_row(instruction, user_text, content))


def generations_of(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """GENERATION observations in time order (ties broken by id, so order never depends on export order)."""
    observations = [o for o in trace.get("observations") or [] if isinstance(o, dict)]
    generations = [o for o in observations if o.get("type") == "GENERATION"]
    return sorted(generations, key=lambda o: (str(o.get("startTime") or ""), str(o.get("id") or "")))


def convert_traces(traces: Iterable[dict[str, Any]], agent_id: str) -> TraceConversion:
    """Rows of every generation of the agent's traces, in trace-time order, with skip counts."""
    conversion = TraceConversion()
    matching = []
    for trace in traces:
        conversion.traces_read += 1
        if trace_belongs_to_agent(trace, agent_id):
            matching.append(trace)
    conversion.traces_matched = len(matching)
    matching.sort(key=lambda trace: (str(trace.get("timestamp") or ""), str(trace.get("id") or "")))
    for trace in matching:
        observations = trace.get("observations") or []
        not_objects = sum(not isinstance(observation, dict) for observation in observations)
        if not_objects:
            conversion.skipped["observation is not a JSON object"] += not_objects
        for generation in generations_of(trace):
            conversion.generations_seen += 1
            try:
                track, candidate = generation_row(generation)
            except SkipGeneration as reason:
                conversion.skipped[str(reason)] += 1
                continue
            conversion.candidates[track].append(candidate)
    return conversion
