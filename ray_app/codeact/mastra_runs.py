"""A Mastra agent run read out of its Langfuse trace: the request, the model's turns, each tool call and its outcome.

The trace is in the shape of Langfuse's `GET /api/public/traces/{id}` (an export pulled from Langfuse,
or OTLP mapped by `ray_app/data/otlp_traces.py`). What `@mastra/langfuse` records and this reads:

- the run: an AGENT observation (span `invoke_agent <agent name>`) with no AGENT above it. Its input
  is the request (a string, or messages whose last user turn is the request); its attribute
  `gen_ai.tool.definitions` lists the names of the tools offered (names only: no schemas);
- its model turns: `agent_step` spans (metadata `spanType` "model_step", ordered by
  `mastra.model_step.step_index`, else start time) whose output is
  `{"text", "toolCalls": [{"toolCallId", "toolName", "args"}]}`, each with a `chat <model>`
  GENERATION child (model name, token usage, latency);
- its tool executions: TOOL observations (`execute_tool <tool>`), input = arguments, output = result,
  matched to calls by `gen_ai.tool.call.id` (else the next execution of the same tool). A call failed
  when its span has level ERROR, when Mastra answered with its error object (`{"error": true,
  "message": ...}`: input validation, a tool that threw), or when no execution was recorded.

Observations of an agent the run called (an agent used as a tool) belong to that agent, not the run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ray_app.data.traces import SkipGeneration, _maybe_json, _text_content
from ray_app.json_text import compact_json

NOT_EXECUTED = "the agent recorded no execution of this call (an unknown tool?)"


class SkipRun(Exception):
    """This agent run cannot become a trajectory; the message is the reason counted in the summary."""


@dataclass(frozen=True)
class TurnUsage:
    """One model turn's cost, from its GENERATION observation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True)
class ToolCallOutcome:
    name: str
    arguments: dict[str, Any]
    result: Any  # the tool's output (JSON value or text); Mastra's error object when it failed that way
    error: str | None  # why the call failed, None when it succeeded
    seconds: float  # the execution's duration
    text: str  # what the model wrote in the turn of this call (on the turn's first call only)
    usage: TurnUsage | None  # the turn's cost (on the turn's first call only)
    description: str  # the tool's description as the execution span recorded it


@dataclass(frozen=True)
class AgentRun:
    trace_id: str
    observation_id: str
    agent: str  # the agent's id (`gen_ai.agent.id`), else its span's name
    request: str
    model: str  # the model name of the run's first model call
    offered_tools: tuple[str, ...]  # names offered to the model ("" when the export does not say)
    calls: tuple[ToolCallOutcome, ...]
    final_text: str  # the last turn's text when that turn called no tool, else ""
    final_usage: TurnUsage | None
    ended_in_call: bool  # the last turn called a tool (the run stopped at its step limit)
    failed: bool  # the agent span has level ERROR


class ObservationTree:
    """A trace's observations with their parent links."""

    def __init__(self, observations: list[dict[str, Any]]):
        self.observations = observations
        self.by_id = {observation.get("id"): observation for observation in observations}

    def enclosing_agent(self, observation: dict[str, Any]) -> dict[str, Any] | None:
        parent, seen = self.by_id.get(observation.get("parentObservationId")), set()
        while parent is not None and id(parent) not in seen:  # a cycle would be a broken export
            if parent.get("type") == "AGENT":
                return parent
            seen.add(id(parent))
            parent = self.by_id.get(parent.get("parentObservationId"))
        return None

    def agent_runs(self) -> list[dict[str, Any]]:
        """AGENT observations not inside another agent."""
        return [obs for obs in self.observations if obs.get("type") == "AGENT" and self.enclosing_agent(obs) is None]

    def owned_by(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        return [obs for obs in self.observations if obs is not run and self.enclosing_agent(obs) is run]

    def children(self, observation: dict[str, Any]) -> list[dict[str, Any]]:
        return [obs for obs in self.observations if obs.get("parentObservationId") == observation.get("id")]


def attributes(observation: dict[str, Any]) -> dict[str, Any]:
    """The span attributes Langfuse keeps under `metadata.attributes` (values may be JSON text)."""
    metadata = _maybe_json(observation.get("metadata"))
    found = _maybe_json(metadata.get("attributes")) if isinstance(metadata, dict) else None
    return found if isinstance(found, dict) else {}


def read_agent_run(trace: dict[str, Any], tree: ObservationTree, run: dict[str, Any]) -> AgentRun:
    """The run's request, turns and calls with outcomes (raises SkipRun when the trace cannot say)."""
    request = _request_text(run.get("input")) or _request_text(trace.get("input"))
    if not request:
        raise SkipRun("no user request in the agent span")
    owned = tree.owned_by(run)
    turns = [_model_turn(step, tree) for step in sorted(filter(_is_model_step, owned), key=_step_order)]
    if not turns:
        raise SkipRun("no model step in the agent run")
    executions = sorted((obs for obs in owned if obs.get("type") == "TOOL"), key=lambda obs: obs.get("startTime") or "")
    descriptions = {_tool_name(obs): str(attributes(obs).get("gen_ai.tool.description") or "") for obs in executions}
    calls = []
    for text, turn_calls, generation in turns:
        for position, (name, arguments, call_id) in enumerate(turn_calls):
            result, error, seconds = _outcome(name, call_id, executions)
            first = position == 0
            calls.append(
                ToolCallOutcome(
                    name, arguments, result, error, seconds,
                    text=text if first else "", usage=_usage(generation) if first else None,
                    description=descriptions.get(name, ""),
                )
            )  # fmt: skip
    last_text, last_calls, last_generation = turns[-1]
    offered = _maybe_json(attributes(run).get("gen_ai.tool.definitions"))  # names, or {name, ...} objects
    offered = offered if isinstance(offered, list) else []
    names = [item.get("name") if isinstance(item, dict) else item for item in offered]
    model = next((generation.get("model") for _, _, generation in turns if generation and generation.get("model")), "")
    return AgentRun(
        trace_id=str(trace.get("id")),
        observation_id=str(run.get("id")),
        agent=str(attributes(run).get("gen_ai.agent.id") or run.get("name") or ""),
        request=request,
        model=str(model or "unknown"),
        offered_tools=tuple(name for name in names if isinstance(name, str)),
        calls=tuple(calls),
        final_text="" if last_calls else last_text.strip(),
        final_usage=None if last_calls else _usage(last_generation),
        ended_in_call=bool(last_calls),
        failed=run.get("level") == "ERROR",
    )


def _request_text(value: Any) -> str:
    """The agent's input text, or the last user turn of input messages."""
    messages = _maybe_json(value)  # a request that is itself JSON text ("42") stays text
    if isinstance(messages, dict):
        messages = messages.get("messages")
    if isinstance(messages, list):
        users = [message for message in messages if isinstance(message, dict) and message.get("role") == "user"]
        try:
            value = _text_content(users[-1].get("content")) if users else ""
        except SkipGeneration as reason:
            raise SkipRun(f"request: {reason}") from None
    return value.strip() if isinstance(value, str) else ""


def _is_model_step(observation: dict[str, Any]) -> bool:
    metadata = observation.get("metadata") if isinstance(observation.get("metadata"), dict) else {}
    return "model_step" in (metadata.get("spanType"), attributes(observation).get("mastra.span.type"))


def _step_order(observation: dict[str, Any]) -> tuple[int, str]:
    index = str(attributes(observation).get("mastra.model_step.step_index"))
    return (int(index) if index.isdigit() else 1 << 30, observation.get("startTime") or "")


def _model_turn(step: dict[str, Any], tree: ObservationTree) -> tuple[str, list[tuple], dict[str, Any] | None]:
    """(text, [(tool name, arguments, call id)], the turn's GENERATION) of one `agent_step` span."""
    output = _maybe_json(step.get("output"))
    if not isinstance(output, dict):
        raise SkipRun("a model step's output is not {text, toolCalls}")
    calls = []
    for call in output.get("toolCalls") or []:
        arguments = _maybe_json(call.get("args", call.get("input"))) if isinstance(call, dict) else None
        if not isinstance(arguments, dict) or not isinstance(call.get("toolName"), str):
            raise SkipRun("a tool call without a name or with arguments that are not a JSON object")
        calls.append((call["toolName"], arguments, call.get("toolCallId")))
    generation = next((obs for obs in tree.children(step) if obs.get("type") == "GENERATION"), None)
    return str(output.get("text") or ""), calls, generation


def _tool_name(observation: dict[str, Any]) -> str:
    name = attributes(observation).get("gen_ai.tool.name")
    return name if isinstance(name, str) else str(observation.get("name", "")).removeprefix("execute_tool ")


def _outcome(name: str, call_id: Any, executions: list[dict[str, Any]]) -> tuple[Any, str | None, float]:
    """(result, error or None, seconds) of a call; its execution is taken out of `executions`."""
    execution = next(
        (obs for obs in executions if call_id and attributes(obs).get("gen_ai.tool.call.id") == call_id), None
    )
    if execution is None:  # an export without call ids: the next execution of the same tool
        execution = next((obs for obs in executions if _tool_name(obs) == name), None)
    if execution is None:
        return None, NOT_EXECUTED, 0.0
    executions.remove(execution)
    result, seconds = _maybe_json(execution.get("output")), _seconds(execution)
    if execution.get("level") == "ERROR":
        return result, str(execution.get("statusMessage") or result or "the tool failed"), seconds
    if isinstance(result, dict) and result.get("error") is True:  # Mastra's tool error object
        return result, str(result.get("message") or compact_json(result)), seconds
    return result, None, seconds


def _seconds(observation: dict[str, Any] | None) -> float:
    if not observation or not observation.get("startTime") or not observation.get("endTime"):
        return 0.0
    start, end = (
        dt.datetime.fromisoformat(str(observation[key]).replace("Z", "+00:00")) for key in ("startTime", "endTime")
    )
    return max((end - start).total_seconds(), 0.0)


def _usage(generation: dict[str, Any] | None) -> TurnUsage | None:
    if generation is None:
        return None
    usage = generation.get("usageDetails") or generation.get("usage") or {}
    return TurnUsage(int(usage.get("input") or 0), int(usage.get("output") or 0), _seconds(generation))
