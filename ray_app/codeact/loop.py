"""The CodeAct loop: one code for teacher capture, student evaluation and the example agent.

A trajectory starts with two messages (`python_signatures.task_messages`: a short system message
showing the tools as Python signatures, and the task). Each step the model answers with a thought
and one code block (`Thought: ...` then `<code>...</code>`; generation stops at `</code>`); the code
runs in the trajectory's own sandbox process (`sandbox.SandboxSession`: variables live on between
steps); what it printed, returned or raised comes back as the next user turn `Observation: ...`,
marked `"observation": true` so training can leave it out of the loss. The trajectory ends when
the code calls `final_answer(value)`, after `max_steps` steps, or when it has used its token budget.

Trajectories are stepped together: each step is one batched call of the chat engine for every
unfinished trajectory (the local SLM decodes them in one running batch), then their executions run
side by side (each in its own child process).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from ray_app.codeact.records import CodeactTask, Execution, Step, StopReason, Trajectory, trajectory_id
from ray_app.codeact.sandbox import SandboxLimits, SandboxSession
from ray_app.engines.base import ChatEngine, ChatRequest
from ray_app.prompts import load_templates, render_template

CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
STOP_TEXTS = (CODE_CLOSE,)
# Teachers that were not trained on this format often write a markdown block instead: accepted too.
FENCED_CODE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class LoopSettings:
    max_steps: int = 4
    max_new_tokens: int = 256  # per model turn
    token_budget: int = (
        4096  # prompt + completion tokens over a whole trajectory; past it, it stops (the filter rejects it)
    )
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_steps": self.max_steps,
            "max_new_tokens": self.max_new_tokens,
            "token_budget": self.token_budget,
            "sandbox": asdict(self.sandbox),
        }


def completed_output(text: str) -> str:
    """The model's turn as it stands in the conversation: an opened code block gets its closing tag
    back (generation stopped on it, and the stop text is not part of the answer)."""
    opened = text.rfind(CODE_OPEN)
    if opened != -1 and CODE_CLOSE not in text[opened:]:
        return text.rstrip() + "\n" + CODE_CLOSE
    return text


def parse_action(text: str) -> tuple[str, str | None]:
    """(thought, code) of one model turn; code is None when there is no code block (an invalid action)."""
    opened = text.find(CODE_OPEN)
    if opened != -1:
        closed = text.find(CODE_CLOSE, opened)
        code = text[opened + len(CODE_OPEN) : closed if closed != -1 else len(text)]
        thought = text[:opened]
    else:
        fenced = FENCED_CODE.search(text)
        if fenced is None:
            return thought_text(text), None
        code, thought = fenced.group(1), text[: fenced.start()]
    code = code.strip("\n")
    return thought_text(thought), code if code.strip() else None


def thought_text(text: str) -> str:
    text = text.strip()
    return text[len("Thought:") :].strip() if text.startswith("Thought:") else text


def step_observation(step: Step) -> str:
    """What the sandbox reported for the step's code, or the no-code error when it wrote none."""
    return step.execution.observation if step.execution else load_templates()["codeact_no_code"]


def observation_message(step: Step) -> dict[str, Any]:
    observation = step_observation(step)
    return {"role": "user", "content": render_template("codeact_observation", observation=observation),
            "observation": True}  # fmt: skip


def chat_messages_of(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What an engine gets: role and content only (the observation mark stays in the record)."""
    return [{"role": message["role"], "content": message["content"]} for message in messages]


@dataclass
class RunningTrajectory:
    index: int  # the task's position in `run_trajectories`' list
    task: CodeactTask
    messages: list[dict[str, Any]]
    session: SandboxSession
    steps: list[Step] = field(default_factory=list)
    stop_reason: StopReason | None = None

    @property
    def tokens(self) -> int:
        return sum(step.prompt_tokens + step.completion_tokens for step in self.steps)

    def finish_step(self, step: Step, settings: LoopSettings) -> None:
        self.steps.append(step)
        self.messages.append({"role": "assistant", "content": step.model_output})
        if step.execution is not None and step.execution.has_final_answer:
            self.stop_reason = "final_answer"
            return
        self.messages.append(observation_message(step))
        if self.tokens >= settings.token_budget:
            self.stop_reason = "token_budget"
        elif len(self.steps) >= settings.max_steps:
            self.stop_reason = "max_steps" if any(step.code is not None for step in self.steps) else "no_code"


def run_trajectories(
    tasks: list[CodeactTask],
    engine: ChatEngine,
    settings: LoopSettings | None = None,
    on_step: Callable[[int], None] | None = None,
    on_task_step: Callable[[int, Step], None] | None = None,
) -> list[Trajectory]:
    """Every task run to its end by `engine`, in task order. `on_step(n)` after each batched step
    with the number of trajectories that finished in it (progress bars); `on_task_step(i, step)` for
    each step of task `i` as soon as its code has run (the example agent prints it)."""
    from ray_app.codeact.python_signatures import task_messages

    settings = settings or LoopSettings()
    described = engine.describe()
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
        # Each session waits for its child to start (~0.35 s): start them side by side.
        starting = [pool.submit(SandboxSession, task.tools, settings.sandbox) for task in tasks]
        for future in starting:  # every started child is closed on the way out, even if one failed
            stack.callback(lambda future=future: future.exception() is None and future.result().close())
        imports = settings.sandbox.authorized_imports
        running = [
            RunningTrajectory(index, task, task_messages(task, imports), future.result())
            for index, (task, future) in enumerate(zip(tasks, starting, strict=True))
        ]
        while active := [item for item in running if item.stop_reason is None]:
            requests = [
                ChatRequest(chat_messages_of(item.messages), STOP_TEXTS, settings.max_new_tokens) for item in active
            ]
            generations = engine.chat(requests)
            outputs = [completed_output(generation.text) for generation in generations]
            actions = [parse_action(output) for output in outputs]
            # Each trajectory's code runs in its own child process: side by side.
            executions = list(pool.map(lambda pair: run_code(*pair), zip(active, actions, strict=True)))
            for item, generation, output, (thought, code), execution in zip(
                active, generations, outputs, actions, executions, strict=True
            ):
                step = Step(
                    model_output=output,
                    thought=thought,
                    code=code,
                    execution=execution,
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                    latency_s=generation.latency_s,
                )
                item.finish_step(step, settings)
                if on_task_step:
                    on_task_step(item.index, step)
            if on_step:
                on_step(sum(item.stop_reason is not None for item in active))
    return [trajectory_of(item, engine, described) for item in running]


def run_code(item: RunningTrajectory, action: tuple[str, str | None]) -> Execution | None:
    _, code = action
    return item.session.run(code) if code is not None else None


def trajectory_of(item: RunningTrajectory, engine: ChatEngine, described: dict[str, object]) -> Trajectory:
    answered = [step.execution for step in item.steps if step.execution and step.execution.has_final_answer]
    final = answered[-1] if answered else None
    metadata = {"engine": {key: value for key, value in described.items() if key != "kind"}}
    planned = getattr(engine, "planned_mistake", None)
    if planned is not None:
        metadata["planned_mistake"] = planned(item.task)
    return Trajectory(
        trajectory_id=trajectory_id(item.task.task_id, engine.model_name),
        task=item.task,
        model=engine.model_name,
        engine=engine.kind,
        simulated=bool(described.get("simulated")),
        messages=tuple(item.messages),
        steps=tuple(item.steps),
        stop_reason=item.stop_reason or "max_steps",
        has_final_answer=final is not None,
        final_answer=final.final_answer if final else None,
        metadata=metadata,
    )
