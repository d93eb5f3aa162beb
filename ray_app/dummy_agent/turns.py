"""One agent turn (a user request) recorded as observations under the trace's root span.

Toolcall turn:   SPAN agent.turn → GENERATION llm.plan (teacher, single turn, `tools`)
                                 → SPAN tool.execute (one per tool call; fake result)
                                 → GENERATION llm.respond (multi-turn: tool_calls + `role: tool`; prose)
Structured turn: SPAN agent.turn → GENERATION llm.extract (teacher; project prompt, JSON answer)
                                 → SPAN tool.execute
Chitchat turn:   SPAN agent.turn → GENERATION llm.chitchat (single turn, prose answer: noise)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ray_app.data.rows import Row
from ray_app.dummy_agent.config import AGENT_SYSTEM_PROMPT, TEACHER_MODEL, TEACHER_MODEL_PARAMETERS
from ray_app.dummy_agent.error_profile import arguments_for_tool, perturbed_arguments, structured_answer_text
from ray_app.dummy_agent.langfuse_shapes import TraceRecorder
from ray_app.dummy_agent.synthetic_requests import ToolRequest
from ray_app.json_text import compact_json
from ray_app.prompts import chat_messages, openai_safe_tool_names, openai_tool
from ray_app.prompts.templates import template_parts

CHITCHAT_QUERIES = (
    "Thanks, that was quick! What else can you help me with?",
    "Hi there, are you a real person?",
    "Never mind, I figured it out myself.",
)
CHITCHAT_ANSWERS = (
    "Happy to help! I can look things up and run tools for you; just tell me what you need.",
    "I'm an automated assistant. I can call tools on your behalf to answer requests.",
    "Great, glad it worked out. Let me know if anything else comes up.",
)


@dataclass(frozen=True)
class ToolcallTurn:
    request: ToolRequest
    kind: str  # teacher_toolcall (xLAM test row), dotted_toolcall or other_agent_toolcall
    error: str | None = None


@dataclass(frozen=True)
class StructuredTurn:
    row: Row
    error: str | None = None
    wrapped_input: bool = False  # input `{"messages": [...]}` instead of the bare list
    message_output: bool = False  # output an assistant message instead of a string


@dataclass(frozen=True)
class ChitchatTurn:
    query: str
    answer: str


Turn = ToolcallTurn | StructuredTurn | ChitchatTurn


def teacher_metadata(kind: str, error: str | None = None) -> dict[str, Any]:
    return {"simulated": True, "kind": kind, "injected_error": error}


def turn_query(turn: Turn) -> str:
    if isinstance(turn, ToolcallTurn):
        return turn.request.query
    if isinstance(turn, ChitchatTurn):
        return turn.query
    return structured_query(turn.row.prompt)


def structured_query(prompt: str) -> str:
    """The user text at the end of a structured prompt (after the template's last literal part)."""
    head, _ = template_parts("structured", "query")
    return prompt.rpartition(head.rpartition("}}")[2])[2]


def structured_tool_name(prompt: str) -> str:
    """The tool named by a structured prompt (`Return the arguments for the tool "NAME" …`)."""
    head, _ = template_parts("structured", "tool_name")
    return prompt[len(head) :].partition('"')[0] if prompt.startswith(head) else "unknown_tool"


def answered_calls(turn: ToolcallTurn, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """The (tool name, arguments) calls the teacher makes, with the turn's injected error."""
    request, gold = turn.request, (turn.request.tool_name, turn.request.arguments)
    if turn.error is None:
        return [gold]
    if turn.error == "wrong_argument_value":
        return [(request.tool_name, perturbed_arguments(request.arguments, rng))]
    if turn.error == "wrong_tool":
        other = rng.choice([s for s in request.signatures if s["name"] != request.tool_name])
        return [(other["name"], arguments_for_tool(other, request.arguments))]
    if turn.error == "two_tool_calls":
        return [gold, (request.tool_name, perturbed_arguments(request.arguments, rng))]
    raise ValueError(f"unknown toolcall error kind {turn.error!r}")


def fake_tool_result(recorder: TraceRecorder, name: str) -> dict[str, Any]:
    return {"status": "ok", "tool": name, "matches": recorder.rng.randint(0, 12), "requestId": recorder.ids.hex(12)}


def record_toolcall_turn(recorder: TraceRecorder, turn_span: dict[str, Any], turn: ToolcallTurn) -> str:
    request = turn.request
    aliases = openai_safe_tool_names([signature["name"] for signature in request.signatures])
    messages = [{"role": "system", "content": AGENT_SYSTEM_PROMPT}, {"role": "user", "content": request.query}]
    tools = [openai_tool(signature) for signature in request.signatures]
    calls = answered_calls(turn, recorder.rng)
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": recorder.ids.tool_call(),
                "type": "function",
                "function": {"name": aliases[name], "arguments": compact_json(arguments)},
            }
            for name, arguments in calls
        ],
    }
    recorder.generation(
        "llm.plan",
        turn_span,
        model=TEACHER_MODEL,
        model_parameters=TEACHER_MODEL_PARAMETERS,
        input={"messages": messages, "tools": tools},
        output=assistant,
        metadata=teacher_metadata(turn.kind, turn.error),
    )
    tool_messages, results = [], []
    for (name, arguments), tool_call in zip(calls, assistant["tool_calls"], strict=True):
        result = fake_tool_result(recorder, name)
        results.append(result)
        metadata = {"toolCallId": tool_call["id"], "openaiName": aliases[name]}
        recorder.tool_span("tool.execute", turn_span, {"tool": name, "arguments": arguments}, result, metadata)
        tool_messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": compact_json(result)})
    names = " and ".join(name for name, _ in calls)
    answer = f"I ran {names}; it reported {results[0]['matches']} matching records."
    recorder.generation(
        "llm.respond",
        turn_span,
        model=TEACHER_MODEL,
        model_parameters=TEACHER_MODEL_PARAMETERS,
        input={"messages": [*messages, assistant, *tool_messages], "tools": tools},
        output={"role": "assistant", "content": answer},
        metadata=teacher_metadata("multi_turn_respond"),
    )
    return answer


def record_structured_turn(recorder: TraceRecorder, turn_span: dict[str, Any], turn: StructuredTurn) -> str:
    messages = chat_messages(turn.row.prompt)
    text = structured_answer_text(turn.row.completion, turn.error, recorder.rng)
    recorder.generation(
        "llm.extract",
        turn_span,
        model=TEACHER_MODEL,
        model_parameters=TEACHER_MODEL_PARAMETERS,
        input={"messages": messages} if turn.wrapped_input else messages,
        output={"role": "assistant", "content": text} if turn.message_output else text,
        metadata=teacher_metadata("teacher_structured", turn.error),
    )
    # The agent is lenient: it takes the outermost {...} of the answer, so fences and prose still run.
    try:
        arguments = json.loads(text[text.find("{") : text.rfind("}") + 1])
    except ValueError:
        arguments = None
    name = structured_tool_name(turn.row.prompt)
    result = fake_tool_result(recorder, name)
    recorder.tool_span("tool.execute", turn_span, {"tool": name, "arguments": arguments}, result, {})
    return f"Done: {name} returned {result['matches']} matches."


def record_chitchat_turn(recorder: TraceRecorder, turn_span: dict[str, Any], turn: ChitchatTurn) -> str:
    messages = [{"role": "system", "content": AGENT_SYSTEM_PROMPT}, {"role": "user", "content": turn.query}]
    recorder.generation(
        "llm.chitchat",
        turn_span,
        model=TEACHER_MODEL,
        model_parameters=TEACHER_MODEL_PARAMETERS,
        input=messages,
        output={"role": "assistant", "content": turn.answer},
        metadata=teacher_metadata("prose_answer"),
    )
    return turn.answer


def record_turn(recorder: TraceRecorder, root: dict[str, Any], turn: Turn) -> str:
    """Record `turn` under `root`; return the agent's final answer to the user."""
    track = "toolcall" if isinstance(turn, ToolcallTurn) else "structured" if isinstance(turn, StructuredTurn) else None
    turn_span = recorder.open_span("agent.turn", root, {"user": turn_query(turn)}, {"track": track})
    if isinstance(turn, ToolcallTurn):
        answer = record_toolcall_turn(recorder, turn_span, turn)
    elif isinstance(turn, StructuredTurn):
        answer = record_structured_turn(recorder, turn_span, turn)
    else:
        answer = record_chitchat_turn(recorder, turn_span, turn)
    recorder.close_span(turn_span, answer)
    return answer
