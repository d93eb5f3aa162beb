"""One CodeAct trajectory as one Langfuse trace record, and back (pure functions, no SDK).

The record has the shape of Langfuse's `GET /api/public/traces/{id}` (what `slm-swap data traces`
and `read_trace_jsonl` read): trace fields plus `observations`.

- trace: id = `trajectory_trace_id(trajectory_id)` (the id Langfuse's `create_trace_id(seed=...)` gives,
  so a local file and Langfuse agree), name "codeact-trajectory", tags ["codeact", kind], metadata
  {trajectory_id, task_id, track, kind, model, engine, simulated, format_version}.
- AGENT "codeact-agent" (the root): input = the task record (`task.to_json()`, gold included, so a
  trace alone rebuilds the task); output = {final_answer, has_final_answer, stop_reason, messages}
  (`messages`: the whole chat as the model saw it, observation turns marked); metadata = the trace
  metadata plus `trajectory_metadata`.
- per step i (1-based), children of the AGENT:
  GENERATION "model call i": input = the messages sent (without the observation mark), output = the
  model's raw text, model, usageDetails, metadata {step, thought, latency_s};
  TOOL "execute i" (only when the step had code): input = the code, output = the observation,
  level ERROR + statusMessage when it raised (WARNING for a violation alone), metadata {step, executed,
  tool_calls, has_final_answer, final_answer, error, violation, duration_s}.
- EVENT "final_answer" (when there is one): output = the final answer.

Times are offsets from TRACE_BASE_TIME built from the recorded latencies (trajectories record
durations, not clock times), so one trajectory always gives the same bytes. Recorded latencies are also
kept in metadata (`latency_s`, `duration_s`): a trace replayed to Langfuse has replay-time timestamps.

`trajectory_from_trace` reads only observation input/output/usage/metadata (never trace-level fields,
which a Langfuse pull does not return) and decodes JSON text where the v2 observations API returns
raw strings, so it reads a local file and a pulled trace alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from ray_app.codeact.records import FORMAT_VERSION, CodeactTask, Execution, Step, ToolCallRecord, Trajectory

TRACE_NAME = "codeact-trajectory"
AGENT_NAME = "codeact-agent"
FINAL_ANSWER_EVENT = "final_answer"
TRACE_BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TRACE_METADATA_KEYS = ("trajectory_id", "task_id", "track", "kind", "model", "engine", "simulated", "format_version")
# Every observation metadata key written here; a Langfuse pull must ask for them untruncated
# (the v2 observations API cuts metadata values at 200 characters unless listed in expandMetadata).
OBSERVATION_METADATA_KEYS = (
    *TRACE_METADATA_KEYS, "trajectory_metadata", "step", "thought", "latency_s", "executed", "tool_calls",
    "has_final_answer", "final_answer", "error", "violation", "duration_s",
)  # fmt: skip


class TrajectoryTraceError(ValueError):
    """A trace is not a complete CodeAct trajectory; the message names the trace and what is missing."""


def trajectory_trace_id(trajectory_id: str) -> str:
    """32 hex digits: sha256 of the trajectory id, as Langfuse's `create_trace_id(seed=trajectory_id)`."""
    return hashlib.sha256(trajectory_id.encode("utf-8")).digest()[:16].hex()


def _iso(offset_ms: int, base_time: dt.datetime) -> str:
    return (base_time + dt.timedelta(milliseconds=offset_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _trace_metadata(trajectory: Trajectory) -> dict[str, Any]:
    task = trajectory.task
    return {
        "trajectory_id": trajectory.trajectory_id,
        "task_id": task.task_id,
        "track": task.track,
        "kind": task.kind,
        "model": trajectory.model,
        "engine": trajectory.engine,
        "simulated": trajectory.simulated,
        "format_version": trajectory.format_version,
    }


def _messages_sent(messages: tuple[dict[str, Any], ...]) -> list[list[dict[str, Any]]]:
    """Per assistant turn, the messages before it as that model call was sent them (the observation mark
    is the record's, not the model's)."""
    sent = [{key: value for key, value in message.items() if key != "observation"} for message in messages]
    return [sent[:index] for index, message in enumerate(messages) if message.get("role") == "assistant"]


def trajectory_observations(trajectory: Trajectory, base_time: dt.datetime = TRACE_BASE_TIME) -> dict[str, Any]:
    """The trace record of one trajectory (see the module docstring); the same trajectory gives equal records."""
    trace_id = trajectory_trace_id(trajectory.trajectory_id)
    observations: list[dict[str, Any]] = []

    def record(kind: str, name: str, start_ms: int, end_ms: int, parent: str | None, **fields: Any) -> dict:
        observation = {
            "id": hashlib.sha256(f"{trace_id}/{len(observations)}".encode()).hexdigest()[:16],
            "traceId": trace_id,
            "type": kind,
            "name": name,
            "startTime": _iso(start_ms, base_time),
            "endTime": _iso(end_ms, base_time),
            "completionStartTime": None,
            "parentObservationId": parent,
            "model": None,
            "modelParameters": None,
            "input": None,
            "output": None,
            "usage": None,
            "usageDetails": None,
            "metadata": {},
            "level": "DEFAULT",
            "statusMessage": None,
            "latency": (end_ms - start_ms) / 1000,
        }
        observation.update(fields)
        observations.append(observation)
        return observation

    metadata = _trace_metadata(trajectory)
    outcome = {
        "final_answer": trajectory.final_answer,
        "has_final_answer": trajectory.has_final_answer,
        "stop_reason": trajectory.stop_reason,
        "messages": list(trajectory.messages),
    }
    agent = record(
        "AGENT", AGENT_NAME, 0, 0, None, input=trajectory.task.to_json(), output=outcome,
        metadata={**metadata, "trajectory_metadata": trajectory.metadata},
    )  # fmt: skip
    sent = _messages_sent(trajectory.messages)
    clock_ms = 0
    final_step = None
    for number, step in enumerate(trajectory.steps, start=1):
        latency_ms = round(step.latency_s * 1000)
        total = step.prompt_tokens + step.completion_tokens
        record(
            "GENERATION", f"model call {number}", clock_ms, clock_ms + latency_ms, agent["id"],
            model=trajectory.model,
            input=sent[number - 1] if number <= len(sent) else list(trajectory.messages),
            output=step.model_output,
            usage={"input": step.prompt_tokens, "output": step.completion_tokens, "total": total, "unit": "TOKENS"},
            usageDetails={"input": step.prompt_tokens, "output": step.completion_tokens, "total": total},
            metadata={"step": number, "thought": step.thought, "latency_s": step.latency_s},
        )  # fmt: skip
        clock_ms += latency_ms
        if step.code is None and step.execution is None:
            continue
        execution = step.execution
        duration_ms = round(execution.duration_s * 1000) if execution else 0
        facts = execution.to_json() if execution else {}
        observation_text = facts.pop("observation", None)
        level = "ERROR" if facts.get("error") else "WARNING" if facts.get("violation") else "DEFAULT"
        record(
            "TOOL", f"execute {number}", clock_ms, clock_ms + duration_ms, agent["id"],
            input=step.code, output=observation_text, level=level, statusMessage=facts.get("error"),
            metadata={"step": number, "executed": execution is not None, **facts},
        )  # fmt: skip
        clock_ms += duration_ms
        if execution is not None and execution.has_final_answer:
            final_step = number
    if trajectory.has_final_answer:
        record(
            "EVENT", FINAL_ANSWER_EVENT, clock_ms, clock_ms, agent["id"],
            output=trajectory.final_answer, metadata={"step": final_step},
        )  # fmt: skip
    agent["endTime"], agent["latency"] = _iso(clock_ms, base_time), clock_ms / 1000
    return {
        "id": trace_id,
        "timestamp": _iso(0, base_time),
        "name": TRACE_NAME,
        "userId": None,
        "sessionId": None,
        "tags": ["codeact", trajectory.task.kind],
        "metadata": metadata,
        "input": agent["input"],
        "output": outcome,
        "release": None,
        "version": None,
        "observations": observations,
    }


def is_trajectory_trace(trace: dict[str, Any]) -> bool:
    """A trace written by this module (or pulled back from Langfuse), whatever else it holds."""
    if trace.get("name") == TRACE_NAME:
        return True
    return any(
        isinstance(o, dict) and o.get("type") == "AGENT" and o.get("name") == AGENT_NAME
        for o in trace.get("observations") or []
    )


def _decoded(value: Any, expected: type | tuple[type, ...], where: str) -> Any:
    """A JSON value, decoding the raw strings the v2 observations API returns for input/output."""
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, str) and str not in types:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TrajectoryTraceError(f"{where} is not JSON") from None
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise TrajectoryTraceError(f"{where} must be {names}, got {type(value).__name__}")
    return value


def _text(value: Any) -> Any:
    # Langfuse may store an empty string output as null.
    return "" if value is None else value


def _field(mapping: dict[str, Any], key: str, expected: type | tuple[type, ...], where: str) -> Any:
    if key not in mapping:
        raise TrajectoryTraceError(f"{where} has no {key!r}")
    return _decoded(mapping[key], expected, f"{where} field {key!r}")


def _by_step(observations: list[dict[str, Any]], kind: str) -> dict[int, dict[str, Any]]:
    steps: dict[int, dict[str, Any]] = {}
    for observation in observations:
        if observation.get("type") != kind:
            continue
        where = f"{kind} observation {observation.get('name')!r}"
        metadata = _decoded(observation.get("metadata") or {}, dict, f"{where} metadata")
        number = _field(metadata, "step", int, f"{where} metadata")
        if number in steps:
            raise TrajectoryTraceError(f"two {kind} observations for step {number}")
        steps[number] = observation
    return steps


def _execution(tool: dict[str, Any]) -> Execution | None:
    where = f"TOOL observation {tool.get('name')!r}"
    metadata = _decoded(tool.get("metadata") or {}, dict, f"{where} metadata")
    if not _field(metadata, "executed", bool, f"{where} metadata"):
        return None
    facts = {key: metadata.get(key) for key in ("has_final_answer", "final_answer", "error", "violation")}
    calls = _field(metadata, "tool_calls", list, f"{where} metadata")
    return Execution(
        observation=_decoded(_text(tool.get("output")), str, f"{where} output"),
        tool_calls=tuple(ToolCallRecord.from_json(_decoded(call, dict, f"{where} tool call")) for call in calls),
        has_final_answer=bool(facts["has_final_answer"]),
        final_answer=facts["final_answer"],
        error=facts["error"],
        violation=facts["violation"],
        duration_s=float(_field(metadata, "duration_s", (int, float), f"{where} metadata")),
    )


def _steps(observations: list[dict[str, Any]]) -> tuple[Step, ...]:
    generations, tools = _by_step(observations, "GENERATION"), _by_step(observations, "TOOL")
    numbers = sorted(generations)
    if numbers != list(range(1, len(numbers) + 1)):
        raise TrajectoryTraceError(f"GENERATION steps must be 1..n, got {numbers}")
    if set(tools) - set(generations):
        orphans = sorted(set(tools) - set(generations))
        raise TrajectoryTraceError(f"TOOL observation for step(s) {orphans} without a model call")
    steps = []
    for number in numbers:
        generation = generations[number]
        where = f"GENERATION observation {generation.get('name')!r}"
        metadata = _decoded(generation.get("metadata") or {}, dict, f"{where} metadata")
        usage = _decoded(generation.get("usageDetails") or {}, dict, f"{where} usageDetails")
        tool = tools.get(number)
        steps.append(
            Step(
                model_output=_decoded(_text(generation.get("output")), str, f"{where} output"),
                thought=_field(metadata, "thought", str, f"{where} metadata"),
                code=_decoded(tool.get("input"), str, f"TOOL observation {tool.get('name')!r} input") if tool else None,
                execution=_execution(tool) if tool else None,
                prompt_tokens=int(usage.get("input") or 0),
                completion_tokens=int(usage.get("output") or 0),
                latency_s=float(_field(metadata, "latency_s", (int, float), f"{where} metadata")),
            )
        )
    return tuple(steps)


def trajectory_from_trace(trace: dict[str, Any]) -> Trajectory:
    """The trajectory a trace record holds (inverse of `trajectory_observations`), or TrajectoryTraceError."""
    try:
        return _trajectory_from_trace(trace)
    except TrajectoryTraceError as error:
        raise TrajectoryTraceError(f"trace {trace.get('id')!r}: {error}") from None


def _trajectory_from_trace(trace: dict[str, Any]) -> Trajectory:
    observations = [o for o in trace.get("observations") or [] if isinstance(o, dict)]
    agents = [o for o in observations if o.get("type") == "AGENT"]
    if len(agents) != 1:
        raise TrajectoryTraceError(f"expected exactly one AGENT observation ({AGENT_NAME}), found {len(agents)}")
    agent = agents[0]
    metadata = _decoded(agent.get("metadata") or {}, dict, "AGENT metadata")
    version = _field(metadata, "format_version", int, "AGENT metadata")
    if version != FORMAT_VERSION:
        raise TrajectoryTraceError(f"format_version {version}: this slm-swap reads version {FORMAT_VERSION}")
    task_record = _decoded(agent.get("input"), dict, "AGENT input (the task record)")
    try:
        task = CodeactTask.from_json(task_record)
    except (KeyError, TypeError, AttributeError) as error:
        raise TrajectoryTraceError(f"AGENT input is not a task record: missing or bad field {error}") from None
    recorded_task_id = _field(metadata, "task_id", str, "AGENT metadata")
    if task.task_id != recorded_task_id:
        raise TrajectoryTraceError(f"AGENT input is task {task.task_id}, metadata says task {recorded_task_id}")
    outcome = _decoded(agent.get("output"), dict, "AGENT output")
    messages = _field(outcome, "messages", list, "AGENT output")
    if not all(isinstance(message, dict) and "role" in message for message in messages):
        raise TrajectoryTraceError("AGENT output field 'messages' must be chat messages with a role")
    return Trajectory(
        trajectory_id=_field(metadata, "trajectory_id", str, "AGENT metadata"),
        task=task,
        model=_field(metadata, "model", str, "AGENT metadata"),
        engine=_field(metadata, "engine", str, "AGENT metadata"),
        simulated=_field(metadata, "simulated", bool, "AGENT metadata"),
        messages=tuple(messages),
        steps=_steps(observations),
        stop_reason=_field(outcome, "stop_reason", str, "AGENT output"),
        has_final_answer=_field(outcome, "has_final_answer", bool, "AGENT output"),
        final_answer=outcome.get("final_answer"),
        metadata=_decoded(
            metadata.get("trajectory_metadata") or {}, dict, "AGENT metadata field 'trajectory_metadata'"
        ),
        format_version=version,
    )
