"""Capture your own Python agent's run as a CodeAct trajectory, in the same trace shape as `slm-swap capture`.

```python
with trajectory_capture(task_or_request, model="gpt-4o", writers=trajectory_trace_writers(path)) as capture:
    capture.model_call(messages, output, usage={"input": 812, "output": 64}, latency_s=1.2, code=code)
    capture.execution(code, observation, error=None, tool_calls=[{"name": ..., "arguments": {...}}])
    capture.final_answer(value)
trajectory = capture.trajectory  # also written by each writer when the block ends
```

- A plain request string becomes a task without gold (`kind` "multistep" unless given): the filter's answer
  check then rejects it, but the trace is kept for inspection; pass a `CodeactTask` to have it graded.
- `messages` are what the model was sent; the trajectory's chat is the last call's messages plus its
  output, and the last observation when code ran after it. User turns after the task and `tool` turns
  count as observations (marked `"observation": true`).
- The run ends as `final_answer` when one was given, as `engine_error` when the block raised (the
  trajectory is still written, then the error propagates), else as `stop_reason` (default `max_steps`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ray_app.codeact.records import (
    CodeactTask,
    Execution,
    Step,
    StopReason,
    TaskKind,
    ToolCallRecord,
    ToolSpec,
    Trajectory,
    trajectory_id,
)
from ray_app.prompts import render_template


@dataclass
class TrajectoryCapture:
    task: CodeactTask
    model: str
    engine: str = "custom"
    steps: list[Step] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: StopReason = "max_steps"
    has_final_answer: bool = False
    answer: Any = None
    trajectory: Trajectory | None = None  # set when the block ends

    def model_call(
        self,
        messages: Sequence[dict[str, Any]],
        output: str,
        usage: dict[str, int] | None = None,
        latency_s: float = 0.0,
        thought: str = "",
        code: str | None = None,
    ) -> None:
        """One model turn: the messages sent, the raw text back, token usage (`input`/`output`, or
        `prompt_tokens`/`completion_tokens`) and seconds taken; `code` is the code block it holds, if any."""
        usage = usage or {}
        self.messages = [_marked(message, index, messages) for index, message in enumerate(messages)]
        self.messages.append({"role": "assistant", "content": output})
        self.steps.append(
            Step(
                model_output=output,
                thought=thought,
                code=code,
                execution=None,
                prompt_tokens=int(usage.get("input", usage.get("prompt_tokens", 0))),
                completion_tokens=int(usage.get("output", usage.get("completion_tokens", 0))),
                latency_s=float(latency_s),
            )
        )

    def execution(
        self,
        code: str,
        observation: str,
        error: str | None = None,
        tool_calls: Sequence[dict[str, Any]] = (),
        duration_s: float = 0.0,
    ) -> None:
        """What the last model turn's code did: the observation text, the error it raised, the tool calls."""
        if not self.steps:
            raise RuntimeError("capture.execution(...) before any capture.model_call(...)")
        calls = tuple(ToolCallRecord.from_json(call) for call in tool_calls)
        execution = Execution(observation=observation, tool_calls=calls, error=error, duration_s=float(duration_s))
        self.steps[-1] = replace(self.steps[-1], code=code, execution=execution)
        content = render_template("codeact_observation", observation=observation)  # as the loop writes it
        self.messages.append({"role": "user", "content": content, "observation": True})

    def final_answer(self, value: Any) -> None:
        self.has_final_answer, self.answer, self.stop_reason = True, value, "final_answer"

    def finish(self, metadata: dict[str, Any] | None = None) -> Trajectory:
        return Trajectory(
            trajectory_id=trajectory_id(self.task.task_id, self.model),
            task=self.task,
            model=self.model,
            engine=self.engine,
            simulated=False,
            messages=tuple(self.messages),
            steps=tuple(self.steps),
            stop_reason=self.stop_reason,
            has_final_answer=self.has_final_answer,
            final_answer=self.answer,
            metadata=metadata or {},
        )


def _marked(message: dict[str, Any], index: int, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), len(messages))
    is_observation = message.get("role") == "tool" or (message.get("role") == "user" and index > first_user)
    return {**message, "observation": True} if is_observation and "observation" not in message else dict(message)


@contextmanager
def trajectory_capture(
    task_or_request: CodeactTask | str,
    *,
    model: str,
    writers: Sequence[Any] = (),
    engine: str = "custom",
    tools: Sequence[ToolSpec] = (),
    kind: TaskKind = "multistep",
) -> Iterator[TrajectoryCapture]:
    """Record one run; when the block ends, build the trajectory and hand it to each writer."""
    task = task_or_request
    if isinstance(task, str):
        task = CodeactTask(kind=kind, request=task, tools=tuple(tools), gold=None, source="capture_wrapper")
    capture = TrajectoryCapture(task=task, model=model, engine=engine)
    try:
        yield capture
    except BaseException as error:
        capture.stop_reason = "engine_error"
        capture.trajectory = capture.finish({"error": f"{type(error).__name__}: {error}"})
        for writer in writers:
            writer.write([capture.trajectory])
        raise
    capture.trajectory = capture.finish()
    for writer in writers:
        writer.write([capture.trajectory])
