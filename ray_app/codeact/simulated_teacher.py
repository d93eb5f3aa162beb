"""A simulated CodeAct teacher for offline runs: scripted from each task's reference solution, with
seeded mistakes, labelled `simulated` in every trajectory it produces (as the replay teacher is).

No hosted model is reachable offline, yet capture → filter → build must be exercised end to end
with the failure modes a real teacher shows. So each task gets one planned behaviour, fixed by the
seed and the task id alone (never by the other tasks or the order they run in):

| plan                     | what the teacher does                                         | filter verdict     |
|--------------------------|---------------------------------------------------------------|--------------------|
| `correct`                | acts out the reference steps, then `final_answer`             | passed             |
| `wrong_argument_fixed`   | first calls the tool without a required argument (the stub     | passed (recovered) |
|                          | raises; with no tool: answers a name it never defined), then   |                    |
|                          | corrects itself after the error observation                    |                    |
| `wrong_tool`             | calls another offered tool (or the right one with a wrong      | wrong_call         |
|                          | value) and answers with its result                             |                    |
| `no_code`                | answers in prose with no code block, every turn                | no_code            |
| `runaway`                | prints and looks again, never calls `final_answer`             | max_steps          |
| `wrong_final_answer`     | computes and answers a different value                         | wrong_final_answer |

A plan that does not fit a task (a structured task offers no tool to get wrong) is replaced by the
next one that does, in the table's order after it, wrapping around.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ray_app.codeact.loop import CODE_OPEN
from ray_app.codeact.records import CodeactTask
from ray_app.engines.base import ChatRequest, Generation

SIMULATED_TEACHER_MODEL = "simulated-teacher"
PLANS = ("correct", "wrong_argument_fixed", "wrong_tool", "no_code", "runaway", "wrong_final_answer")
# How often each plan is drawn (sums to 1): mostly right, as a good teacher is.
PLAN_SHARES = {
    "correct": 0.55,
    "wrong_argument_fixed": 0.15,
    "wrong_tool": 0.08,
    "no_code": 0.06,
    "runaway": 0.06,
    "wrong_final_answer": 0.10,
}
CHARS_PER_TOKEN = 4  # token counts of a simulated turn are estimated from its length


def python_literal(value: Any) -> str:
    """A JSON value as Python source (true/false/null become True/False/None)."""
    return repr(json.loads(json.dumps(value)))


def call_code(task: CodeactTask, name: str, arguments: dict[str, Any]) -> str:
    tool = next(tool for tool in task.tools if tool.name == name)
    rendered = ", ".join(f"{key}={python_literal(value)}" for key, value in arguments.items())
    return f"{tool.python_name}({rendered})"


def reference_steps(task: CodeactTask) -> tuple[str, ...]:
    """The task's own reference steps, or one derived from its gold."""
    if task.reference_steps:
        return task.reference_steps
    if task.kind == "toolcall":
        return (f"result = {call_code(task, task.gold['name'], task.gold['arguments'])}\nfinal_answer(result)",)
    return (f"final_answer({python_literal(task.gold)})",)


def fits(plan: str, task: CodeactTask) -> bool:
    if plan == "wrong_tool":
        return task.kind == "toolcall" and bool(task.gold.get("arguments"))
    if plan == "wrong_argument_fixed":  # without arguments to get wrong: a name it never defined
        return task.kind != "toolcall" or bool(task.gold.get("arguments"))
    if plan == "wrong_final_answer":
        return task.kind != "toolcall"  # a toolcall task is judged on its call, not on the value
    return True


def planned_mistake(task: CodeactTask, seed: int) -> str:
    draw = int(hashlib.sha256(f"simulated-teacher/{seed}/{task.task_id}".encode()).hexdigest()[:12], 16) / 16**12
    cumulative, drawn = 0.0, PLANS[-1]
    for plan in PLANS:
        cumulative += PLAN_SHARES[plan]
        if draw < cumulative:
            drawn = plan
            break
    start = PLANS.index(drawn)
    return next(plan for plan in PLANS[start:] + PLANS[:start] if fits(plan, task))


def wrong_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + " (other)"
    return None


def wrong_answer(gold: Any) -> Any:
    """A plausible wrong answer: a JSON object with its first value changed, a number off by one."""
    if isinstance(gold, dict) and gold:
        key = next(iter(gold))
        changed = wrong_value(gold[key])
        return {**gold, key: changed if changed is not None else "other"}
    changed = wrong_value(gold)
    return changed if changed is not None else "other"


def with_final_answer(code: str, value: Any) -> str:
    """`code` with its final_answer(...) line answering `value` instead (appended when it has none)."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith("final_answer(")]
    return "\n".join([*lines, f"final_answer({python_literal(value)})"])


def wrong_call_code(task: CodeactTask) -> str:
    """Another offered tool with its required arguments, else the gold tool with a changed value."""
    gold_name, arguments = task.gold["name"], dict(task.gold["arguments"])
    for tool in task.tools:
        if tool.name != gold_name and not tool.parameters.get("required"):
            return f"result = {call_code(task, tool.name, {})}\nfinal_answer(result)"
    key = next(iter(arguments))
    changed = wrong_value(arguments[key])
    arguments[key] = changed if changed is not None else "other"
    return f"result = {call_code(task, gold_name, arguments)}\nfinal_answer(result)"


def missing_argument_code(task: CodeactTask) -> str:
    gold_name, arguments = task.gold["name"], dict(task.gold["arguments"])
    tool = next(tool for tool in task.tools if tool.name == gold_name)
    required = [key for key in tool.parameters.get("required", []) if key in arguments]
    arguments.pop(required[0] if required else next(iter(arguments)))
    if not required:  # nothing required: an unknown argument makes the stub refuse the call instead
        arguments["unexpected_argument"] = 1
    return f"result = {call_code(task, gold_name, arguments)}\nfinal_answer(result)"


def scripted_turn(task: CodeactTask, plan: str, turn: int) -> tuple[str, str | None]:
    """(thought, code) of the teacher's turn `turn` (0-based); code None: a turn without code."""
    steps = reference_steps(task)
    if plan == "no_code":
        return "I think the request is clear, so I will answer directly without running anything.", None
    if plan == "runaway":
        return "Let me look at the request once more before answering.", f"print({python_literal(task.request[:60])})"
    if plan == "wrong_tool" and turn == 0:
        return "I will call the tool that fits the request.", wrong_call_code(task)
    if plan == "wrong_final_answer" and turn >= len(steps) - 1:
        return "I have what I need and will give the answer.", with_final_answer(steps[-1], wrong_answer(task.gold))
    if plan == "wrong_argument_fixed":
        if turn == 0 and task.kind != "toolcall":
            return "I will answer with the values from the request.", "final_answer(answer)"
        if turn == 0:
            return "I will call the tool with the arguments from the request.", missing_argument_code(task)
        return "The call failed because an argument was wrong; I will fix it and call again.", steps[
            min(turn - 1, len(steps) - 1)
        ]
    index = min(turn, len(steps) - 1)
    thought = "I will use the result of the previous step." if index else "I will solve this step by step with code."
    return thought, steps[index]


@dataclass
class SimulatedTeacher:
    """A ChatEngine: finds the task from the conversation's opening and plays that task's plan."""

    tasks: list[CodeactTask]
    seed: int = 42
    kind: str = "simulated"
    model_name: str = SIMULATED_TEACHER_MODEL

    def __post_init__(self) -> None:
        from ray_app.codeact.python_signatures import task_messages, tools_block

        self.by_request: dict[str, list[tuple[str, CodeactTask]]] = {}
        for task in self.tasks:
            request = task_messages(task)[1]["content"]
            self.by_request.setdefault(request, []).append((tools_block(task.tools), task))

    def task_of(self, messages: list[dict[str, Any]]) -> CodeactTask | None:
        """The task whose request opens the conversation and whose tools its system message shows."""
        candidates = self.by_request.get(messages[1]["content"], []) if len(messages) > 1 else []
        return next((task for tools, task in candidates if tools in messages[0]["content"]), None)

    def planned_mistake(self, task: CodeactTask) -> str:
        return planned_mistake(task, self.seed)

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        answers = []
        for request in requests:
            task = self.task_of(request.messages)
            if task is None:
                raise ValueError("the simulated teacher was asked about a task it was not given")
            turn = sum(message["role"] == "assistant" for message in request.messages)
            thought, code = scripted_turn(task, self.planned_mistake(task), turn)
            # As a real model stopped on `</code>`: the stop text is not part of the answer.
            text = f"Thought: {thought}" + (f"\n{CODE_OPEN}\n{code}\n" if code is not None else "")
            prompt_chars = sum(len(message["content"]) for message in request.messages)
            answers.append(
                Generation(
                    text=text,
                    prompt_tokens=prompt_chars // CHARS_PER_TOKEN,
                    completion_tokens=max(1, len(text) // CHARS_PER_TOKEN),
                    latency_s=0.0,
                )
            )
        return answers

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "model": self.model_name, "seed": self.seed, "plan_shares": PLAN_SHARES,
                "simulated": True}  # fmt: skip
