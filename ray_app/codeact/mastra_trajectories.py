"""Traces of a tool-using Mastra agent → CodeAct trajectories, so the agent a team already runs feeds Phase II.

Input: what `@mastra/langfuse` (through `@mastra/observability`) exports, either as posted to Langfuse
(OTLP/JSON bodies for `/api/public/otel/v1/traces`, one per line) or pulled back from Langfuse (traces
in the `GET /api/public/traces/{id}` shape, one per line). OTLP is first mapped to that shape
(`ray_app/data/otlp_traces.py`), each agent run is read out of its trace (`mastra_runs.py`), and each
run with at least one tool call becomes a `Trajectory`, checked, filtered and split downstream the
same way as the CodeAct loop's:

- task: the user's request and the tools offered, `kind="toolcall"`;
- one step per tool call: `code` is the equivalent one-line Python call `tool(arg=value, ...)` (the
  tool's Python name), `execution` holds the tool's result as the observation, written as the CodeAct
  sandbox shows a value (`Last output from code snippet:` + its repr), or its error
  (`ToolCallError: ...`, shown as `Error: ToolCallError: ...`) when it failed; the thought is the text
  the model wrote with the call, else a fixed line. Calls made in one model turn become consecutive
  steps (the turn's token usage goes with the first);
- the model's final text becomes a last step `final_answer("...")` and the trajectory's final answer;
- messages rebuilt in the CodeAct shape: the system prompt with the tools as Python signatures, the
  task, then `Thought: ...` + `<code>` assistant turns and `Observation: ...` turns marked
  `"observation": true`;
- `model` is the model name recorded, `engine="mastra"`, `simulated=False`; metadata names the source
  trace and says the gold is not known.

Gold: a production run has no independent gold. The agent's own run is taken as the reference: gold
is the run's LAST successful tool call `{"name", "arguments"}`, so the answer check passes by
construction and proves nothing about the run. What keeps only good runs is the rest: the trajectory
filter checks that the run ended in a final answer (`max_steps` / `no_code` otherwise) and that not
every execution errored, and this converter drops a run whose last tool call failed (an unresolved
tool error, which the answer check cannot see since it compares with the last successful call). Runs
without a tool call, with no successful one or with an unresolved error are skipped and counted by
reason; a run with one tool call is a single-step trajectory.

Tool schemas: the exporter sends tool names and descriptions, not JSON Schemas. Pass the agent's tool
definitions (a JSON list of OpenAI `tools` entries, as the agent sends them to its model) for the real
schemas; a tool without one gets a schema inferred from its calls' arguments in that run (listed in
the trajectory's metadata `inferred_tool_schemas`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.codeact.loop import observation_message
from ray_app.codeact.mastra_runs import AgentRun, ObservationTree, SkipRun, ToolCallOutcome, TurnUsage, read_agent_run
from ray_app.codeact.python_signatures import task_messages
from ray_app.codeact.records import (
    CodeactTask,
    Execution,
    Step,
    ToolCallRecord,
    ToolSpec,
    Trajectory,
    python_identifier,
)
from ray_app.codeact.sandbox import SandboxLimits, observation_text
from ray_app.data.otlp_traces import read_otlp_traces
from ray_app.data.trace_splits import TraceFileError, read_trace_jsonl

ENGINE = "mastra"
CALL_THOUGHT = "I call {tool} with the values the task gives."  # when the model wrote nothing with the call
FINAL_THOUGHT = "I have the answer."
GOLD_NOTE = "not known: the run's last successful tool call (the agent's own run taken as the reference)"


@dataclass
class MastraConversion:
    traces_read: int = 0
    runs_seen: int = 0
    trajectories: list[Trajectory] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "traces_read": self.traces_read,
            "runs_seen": self.runs_seen,
            "trajectories": len(self.trajectories),
            "skipped": dict(sorted(self.skipped.items())),
        }


def read_agent_traces(path: Path) -> list[dict[str, Any]]:
    """A file of OTLP/JSON export bodies or of Langfuse traces, told apart by its first line."""
    with path.open(encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        is_otlp = "resourceSpans" in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        is_otlp = False  # the trace reader reports the bad line with its number
    return read_otlp_traces(path) if is_otlp else read_trace_jsonl(path)


def read_tool_definitions(path: Path) -> dict[str, ToolSpec]:
    """The agent's tools by name: a JSON list of OpenAI `tools` entries or bare `{name, description, parameters}`."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TraceFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(entries, list):
        raise TraceFileError(f"{path}: expected a JSON list of tool definitions")
    specs = {}
    for index, entry in enumerate(entries):
        function = entry.get("function", entry) if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TraceFileError(
                f"{path}: tool {index}: expected an OpenAI tool or a {{name, description, parameters}}"
            )
        specs[function["name"]] = ToolSpec.from_json(function)
    return specs


def mastra_trajectories(traces: list[dict[str, Any]], tools: dict[str, ToolSpec] | None = None) -> MastraConversion:
    """Every agent run of the traces with a tool call, as a trajectory; the others counted by reason."""
    conversion = MastraConversion(traces_read=len(traces))
    for trace in traces:
        tree = ObservationTree(trace.get("observations") or [])
        runs = tree.agent_runs()
        if not runs:
            conversion.skipped["no agent run in the trace"] += 1
        for run in runs:
            conversion.runs_seen += 1
            try:
                conversion.trajectories.append(run_trajectory(read_agent_run(trace, tree, run), tools or {}))
            except SkipRun as reason:
                conversion.skipped[str(reason)] += 1
    return conversion


def run_trajectory(run: AgentRun, given_tools: dict[str, ToolSpec]) -> Trajectory:
    """One agent run as a trajectory (raises SkipRun with the reason when it cannot be one)."""
    if not run.calls:
        raise SkipRun("no tool call (not a multi-step run)")
    successful = [call for call in run.calls if call.error is None]
    if not successful:
        raise SkipRun("no successful tool call (no gold to take)")
    if run.calls[-1].error is not None:
        raise SkipRun("unresolved tool error (the run's last tool call failed)")
    tools, inferred = run_tools(run, given_tools)
    task = CodeactTask(
        kind="toolcall",
        request=run.request,
        tools=tuple(tools),
        gold={"name": successful[-1].name, "arguments": successful[-1].arguments},
        source=f"langfuse-trace:{run.trace_id}",
    )
    python_names = {spec.name: spec.python_name for spec in tools}
    messages: list[dict[str, Any]] = task_messages(task)
    steps = []
    for call in run.calls:
        step = _call_step(call, python_names.get(call.name) or python_identifier(call.name))
        steps.append(step)
        messages += [{"role": "assistant", "content": step.model_output}, observation_message(step)]
    if run.final_text:
        code = f"final_answer({python_literal(run.final_text)})"
        observation = _observation(final=True, final_answer=run.final_text)
        execution = Execution(observation, has_final_answer=True, final_answer=run.final_text)
        steps.append(_step(FINAL_THOUGHT, code, execution, run.final_usage))
        messages.append({"role": "assistant", "content": steps[-1].model_output})  # the run ends: no observation
    if run.failed:
        stop_reason = "engine_error"
    elif run.final_text:
        stop_reason = "final_answer"
    else:
        stop_reason = "max_steps" if run.ended_in_call else "no_code"
    return Trajectory(
        trajectory_id=hashlib.sha256(f"mastra/{run.trace_id}/{run.observation_id}".encode()).hexdigest()[:32],
        task=task,
        model=run.model,
        engine=ENGINE,
        simulated=False,
        messages=tuple(messages),
        steps=tuple(steps),
        stop_reason=stop_reason,
        has_final_answer=bool(run.final_text),
        final_answer=run.final_text or None,
        metadata={
            "source": "mastra-langfuse",
            "trace_id": run.trace_id,
            "agent_observation_id": run.observation_id,
            "agent": run.agent,
            "gold": GOLD_NOTE,
            "gold_known": False,
            "inferred_tool_schemas": inferred,
        },
    )


def _observation(*, error: str | None = None, value: Any = None, final_answer: Any = None, final: bool = False) -> str:
    """What the CodeAct sandbox would show for this outcome (the same text, cut the same way)."""
    reply = {
        "error": error,
        "error_detail": error,
        "has_final_answer": final,
        "final_answer": final_answer,
        "last_output": None if error or final or value is None else repr(value),  # a None value shows nothing
        "logs": "",
        "logs_cut_chars": 0,
    }
    return observation_text(reply, SandboxLimits().output_chars)


def _call_step(call: ToolCallOutcome, function: str) -> Step:
    """A tool call as the step a CodeAct model would have taken: the call as code, its value as observation."""
    error = None if call.error is None else f"ToolCallError: {call.error}"
    record = ToolCallRecord(call.name, call.arguments, call.error)
    observation = _observation(error=error, value=call.result)
    execution = Execution(observation, (record,), error=error, duration_s=call.seconds)
    thought = " ".join(call.text.split()) or CALL_THOUGHT.format(tool=function)
    return _step(thought, python_call(function, call.arguments), execution, call.usage)


def _step(thought: str, code: str, execution: Execution, usage: TurnUsage | None) -> Step:
    usage = usage or TurnUsage()
    return Step(
        model_output=f"Thought: {thought}\n<code>\n{code}\n</code>",  # what a CodeAct model would have written
        thought=thought,
        code=code,
        execution=execution,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        latency_s=usage.latency_s,
    )


def run_tools(run: AgentRun, given: dict[str, ToolSpec]) -> tuple[list[ToolSpec], list[str]]:
    """(the run's tools, the names whose schema was inferred). Names: those offered, else those called."""
    names = list(run.offered_tools) or list(dict.fromkeys(call.name for call in run.calls))
    specs, inferred = [], []
    for name in names:
        if name in given:
            specs.append(given[name])
            continue
        calls = [call for call in run.calls if call.name == name]
        if not calls:
            continue  # offered, never called and not given: nothing to describe it with
        good_calls = [call for call in calls if call.error is None] or calls
        specs.append(inferred_tool_spec(name, calls[0].description, [call.arguments for call in good_calls]))
        inferred.append(name)
    return specs, inferred


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "null")


def inferred_tool_spec(name: str, description: str, calls: list[dict[str, Any]]) -> ToolSpec:
    """A schema from the arguments seen: each parameter's JSON type(s); required = present in every call."""
    types: dict[str, list[str]] = {}
    for arguments in calls:
        for key, value in arguments.items():
            seen = types.setdefault(key, [])
            if _json_type(value) not in seen:
                seen.append(_json_type(value))
    properties = {key: {"type": kinds[0] if len(kinds) == 1 else kinds} for key, kinds in types.items()}
    required = [key for key in types if all(key in arguments for arguments in calls)]
    return ToolSpec(name, description, {"type": "object", "properties": properties, "required": required})


def python_literal(value: Any) -> str:
    """A JSON value as Python source: true → True, null → None; strings and numbers as JSON writes them."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{python_literal(key)}: {python_literal(item)}" for key, item in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


def python_call(function: str, arguments: dict[str, Any]) -> str:
    """`function(name=value, ...)`, parameter names mapped as the CodeAct signatures map them."""
    keywords = [
        f"{key if key.isidentifier() else python_identifier(key)}={python_literal(value)}"
        for key, value in arguments.items()
    ]
    return f"{function}({', '.join(keywords)})"
