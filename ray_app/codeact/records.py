"""The records Phase II passes around: a task, a tool it offers, one code execution, one step, a trajectory.

Every record is frozen and has `to_json` / `from_json` (plain JSON objects, keys in a fixed order), so
a trajectory written by capture reads back equal in the filter, the builder and the report.

- `ToolSpec`: a tool as the agent sees it (name, one-line description, JSON Schema of its parameters)
  plus, for generated multi-step tasks, a table of fixed results keyed by the canonical JSON of the
  arguments. Without a table the sandbox's stub derives its result from the arguments.
- `CodeactTask`: the request, the tools, and the gold answer the correctness check compares with:
  `kind="toolcall"`: gold = {"name": TOOL, "arguments": {...}} (the call the code must make);
  `kind="structured"`: gold = the JSON value `final_answer` must return;
  `kind="multistep"`: gold = the exact final value (it needs a tool's result or a second call).
- `Execution`: what one code action did in the sandbox (observation text, calls, final answer, the
  error it raised, a sandbox violation code).
- `Step`: one model turn (raw output, its thought and code) and the execution of that code.
- `Trajectory`: the whole run of one task by one model, with the chat messages as the model saw them
  (observation turns carry `"observation": true`, so training can mask them).
"""

from __future__ import annotations

import hashlib
import keyword
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ray_app.json_text import canonical_json

FORMAT_VERSION = 1  # bump when a record's JSON shape changes

TaskKind = Literal["toolcall", "structured", "multistep"]
TASK_KINDS: tuple[TaskKind, ...] = ("toolcall", "structured", "multistep")

# Why a trajectory ended (set by the loop).
StopReason = Literal["final_answer", "max_steps", "no_code", "token_budget", "engine_error"]

# Sandbox violation codes (an execution's `violation`): the run goes on, the code is refused or killed.
Violation = Literal[
    "forbidden_import",  # an import outside the allow-list
    "forbidden_access",  # a blocked name or attribute: open, dunder access, eval/exec, os, ...
    "timeout",  # wall-clock limit (the child was killed) or the interpreter's own loop or operation cap
    "memory",  # memory limit reached (MemoryError or the child was killed for it)
    "output_limit",  # printed more than the output limit (output cut, the run goes on)
    "crashed",  # the child process died for another reason
]


def python_identifier(name: str) -> str:
    """A tool name as a Python function name: `crm.create_ticket` -> `crm_create_ticket`."""
    identifier = re.sub(r"\W", "_", name)
    if not identifier or identifier[0].isdigit() or keyword.iskeyword(identifier):
        identifier = f"tool_{identifier}"
    return identifier


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema, type "object"
    results: dict[str, Any] | None = None  # canonical_json(arguments) -> fixed result (multi-step tasks)

    @property
    def python_name(self) -> str:
        return python_identifier(self.name)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"name": self.name, "description": self.description, "parameters": self.parameters}
        if self.results is not None:
            value["results"] = self.results
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ToolSpec:
        return cls(
            name=value["name"],
            description=value.get("description", ""),
            parameters=value.get("parameters") or {"type": "object", "properties": {}},
            results=value.get("results"),
        )


@dataclass(frozen=True)
class CodeactTask:
    kind: TaskKind
    request: str  # what the user asked
    tools: tuple[ToolSpec, ...]
    gold: Any
    instruction: str = ""  # structured tasks: what JSON to return (the agent's instruction)
    source: str = ""  # where it came from: "02_dataset/toolcall/test.jsonl:12", "generated:multistep:3"
    # One code block per step that solves the task (never shown to a model): the simulated teacher
    # acts it out. Empty: derived from the gold (one call, or final_answer(gold)).
    reference_steps: tuple[str, ...] = ()

    @property
    def task_id(self) -> str:
        """16 hex digits of the sha256 of what defines the task (not its source)."""
        defining = {
            "kind": self.kind,
            "request": self.request,
            "instruction": self.instruction,
            "tools": [tool.to_json() for tool in self.tools],
            "gold": self.gold,
        }
        return hashlib.sha256(canonical_json(defining).encode()).hexdigest()[:16]

    @property
    def track(self) -> str:
        """The seed track a final answer of this task feeds: toolcall, else structured (JSON answers)."""
        return "toolcall" if self.kind == "toolcall" else "structured"

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "request": self.request,
            "instruction": self.instruction,
            "tools": [tool.to_json() for tool in self.tools],
            "gold": self.gold,
            "source": self.source,
            "reference_steps": list(self.reference_steps),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> CodeactTask:
        return cls(
            kind=value["kind"],
            request=value["request"],
            tools=tuple(ToolSpec.from_json(tool) for tool in value.get("tools") or []),
            gold=value.get("gold"),
            instruction=value.get("instruction", ""),
            source=value.get("source", ""),
            reference_steps=tuple(value.get("reference_steps") or ()),
        )


@dataclass(frozen=True)
class ToolCallRecord:
    name: str  # the tool's real name (not its Python alias)
    arguments: dict[str, Any]
    error: str | None = None  # the stub refused the call (missing/unknown parameter, wrong type, enum)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "error": self.error}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ToolCallRecord:
        return cls(name=value["name"], arguments=value.get("arguments") or {}, error=value.get("error"))


@dataclass(frozen=True)
class Execution:
    observation: str  # what goes back to the model after "Observation: " (printed output, result or error)
    tool_calls: tuple[ToolCallRecord, ...] = ()
    has_final_answer: bool = False
    final_answer: Any = None  # JSON-able value passed to final_answer(...)
    error: str | None = None  # the code raised: "ToolCallError: ...", "NameError: ...", a violation's reason
    violation: str | None = None  # one of `Violation` when the sandbox refused or killed the code
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "observation": self.observation,
            "tool_calls": [call.to_json() for call in self.tool_calls],
            "has_final_answer": self.has_final_answer,
            "final_answer": self.final_answer,
            "error": self.error,
            "violation": self.violation,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Execution:
        return cls(
            observation=value.get("observation", ""),
            tool_calls=tuple(ToolCallRecord.from_json(call) for call in value.get("tool_calls") or []),
            has_final_answer=bool(value.get("has_final_answer")),
            final_answer=value.get("final_answer"),
            error=value.get("error"),
            violation=value.get("violation"),
            duration_s=float(value.get("duration_s") or 0.0),
        )


@dataclass(frozen=True)
class Step:
    model_output: str  # the model's raw text for this turn (stop sequence included when it stopped there)
    thought: str
    code: str | None  # None: no code block could be parsed (an invalid action)
    execution: Execution | None  # None when there was no code to run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model_output": self.model_output,
            "thought": self.thought,
            "code": self.code,
            "execution": self.execution.to_json() if self.execution else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_s": self.latency_s,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Step:
        execution = value.get("execution")
        return cls(
            model_output=value.get("model_output", ""),
            thought=value.get("thought", ""),
            code=value.get("code"),
            execution=Execution.from_json(execution) if execution else None,
            prompt_tokens=int(value.get("prompt_tokens") or 0),
            completion_tokens=int(value.get("completion_tokens") or 0),
            latency_s=float(value.get("latency_s") or 0.0),
        )


@dataclass(frozen=True)
class Trajectory:
    trajectory_id: str
    task: CodeactTask
    model: str  # who acted: the teacher's model name, "slm", "slm-codeact", "simulated-teacher"
    engine: str  # engine kind: azure, openai-compatible, transformers, simulated
    simulated: bool
    messages: tuple[dict[str, Any], ...]  # system, task, then assistant / observation turns, in order
    steps: tuple[Step, ...]
    stop_reason: StopReason
    has_final_answer: bool = False
    final_answer: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the simulated teacher's planned mistake
    format_version: int = FORMAT_VERSION

    @property
    def prompt_tokens(self) -> int:
        return sum(step.prompt_tokens for step in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(step.completion_tokens for step in self.steps)

    @property
    def latency_s(self) -> float:
        return sum(step.latency_s for step in self.steps) + sum(
            step.execution.duration_s for step in self.steps if step.execution
        )

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        return [call for step in self.steps if step.execution for call in step.execution.tool_calls]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "trajectory_id": self.trajectory_id,
            "task": self.task.to_json(),
            "model": self.model,
            "engine": self.engine,
            "simulated": self.simulated,
            "messages": list(self.messages),
            "steps": [step.to_json() for step in self.steps],
            "stop_reason": self.stop_reason,
            "has_final_answer": self.has_final_answer,
            "final_answer": self.final_answer,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Trajectory:
        version = value.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"trajectory format_version {version!r}: this slm-swap reads version {FORMAT_VERSION}")
        return cls(
            trajectory_id=value["trajectory_id"],
            task=CodeactTask.from_json(value["task"]),
            model=value["model"],
            engine=value["engine"],
            simulated=bool(value["simulated"]),
            messages=tuple(value.get("messages") or []),
            steps=tuple(Step.from_json(step) for step in value.get("steps") or []),
            stop_reason=value["stop_reason"],
            has_final_answer=bool(value.get("has_final_answer")),
            final_answer=value.get("final_answer"),
            metadata=dict(value.get("metadata") or {}),
        )


def trajectory_id(task_id: str, model: str) -> str:
    """Deterministic: one trajectory per (task, model), so a resumed capture knows what it already has."""
    return hashlib.sha256(f"{task_id}/{model}".encode()).hexdigest()[:32]
