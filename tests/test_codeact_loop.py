"""The CodeAct loop (`ray_app/codeact/loop.py`) on its engines: the simulated teacher, a hosted teacher
over HTTP (the real openai SDK against a recording server on 127.0.0.1) and the local SLM's decode
engine (a tiny random model), with the real sandbox."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ray_app.codeact.answer_check import check_answer
from ray_app.codeact.loop import LoopSettings, completed_output, parse_action, run_trajectories
from ray_app.codeact.records import CodeactTask, ToolSpec, Trajectory
from ray_app.codeact.simulated_teacher import PLANS, SimulatedTeacher, planned_mistake
from ray_app.codeact.tasks import build_tasks
from ray_app.paths import PROJECT_ROOT
from tests.recording_server import RecordingServer
from tests.test_hosted_engine import answers, compatible_engine, completion

DATASET_DIR = PROJECT_ROOT / "slm_swap" / "02_dataset"
LOOKUP = ToolSpec(
    "crm.lookup_customer",
    "Find a customer by email.",
    {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
)
LOOKUP_TASK = CodeactTask(
    kind="toolcall",
    request="Look up ana@example.com",
    tools=(LOOKUP,),
    gold={"name": "crm.lookup_customer", "arguments": {"email": "ana@example.com"}},
)

# The filter verdict each plan must end in (the checks the capture → filter → build test counts).
EXPECTED_CHECK = {
    "correct": ("final_answer", "correct"),
    "wrong_argument_fixed": ("final_answer", "correct"),
    "wrong_tool": ("final_answer", "wrong_call"),
    "no_code": ("no_code", "no_final_answer"),
    "runaway": ("max_steps", "no_final_answer"),
    "wrong_final_answer": ("final_answer", "wrong_final_answer"),
}


@pytest.mark.parametrize(
    ("text", "thought", "code"),
    [
        ("Thought: look\n<code>\nx = 1\nprint(x)\n</code>", "look", "x = 1\nprint(x)"),
        ("Thought: cut at the stop\n<code>\nfinal_answer(2)\n", "cut at the stop", "final_answer(2)"),
        ("I will run it.\n```python\nfinal_answer(3)\n```\n", "I will run it.", "final_answer(3)"),
        ("Thought: no code here, just words.", "no code here, just words.", None),
        ("Thought: empty block\n<code>\n\n</code>", "empty block", None),
    ],
)
def test_a_turn_is_parsed_into_thought_and_code(text, thought, code):
    assert parse_action(text) == (thought, code)


def test_an_opened_block_gets_its_closing_tag_back_in_the_conversation():
    assert completed_output("Thought: a\n<code>\nf()\n") == "Thought: a\n<code>\nf()\n</code>"
    assert completed_output("Thought: only words") == "Thought: only words"
    assert completed_output("<code>\nf()\n</code>") == "<code>\nf()\n</code>"


def test_the_simulated_teachers_plan_is_fixed_by_seed_and_task_alone():
    tasks = build_tasks(DATASET_DIR, "test", 8)
    plans = [planned_mistake(task, 42) for task in tasks]
    assert plans == [planned_mistake(task, 42) for task in reversed(tasks)][::-1]
    assert plans != [planned_mistake(task, 7) for task in tasks]
    assert set(plans) == set(PLANS)  # every failure mode shows up on a real split


def test_the_simulated_teacher_ends_each_trajectory_as_its_plan_says():
    tasks = build_tasks(DATASET_DIR, "test", 8)
    tasks = tasks[:12] + tasks[50:56] + tasks[-8:]
    trajectories = run_trajectories(tasks, SimulatedTeacher(tasks), LoopSettings(max_steps=4))
    assert [trajectory.task for trajectory in trajectories] == tasks
    outcomes = Counter()
    for trajectory in trajectories:
        plan = trajectory.metadata["planned_mistake"]
        check = check_answer(trajectory.task, trajectory.final_answer, trajectory.has_final_answer,
                             trajectory.tool_calls)  # fmt: skip
        assert (trajectory.stop_reason, check.code) == EXPECTED_CHECK[plan], (plan, trajectory.task.source)
        assert trajectory.simulated and trajectory.model == "simulated-teacher"
        outcomes[plan] += 1
        if plan == "wrong_argument_fixed":  # the first execution failed and the run recovered
            assert trajectory.steps[0].execution.error and trajectory.steps[-1].execution.has_final_answer
    assert outcomes["correct"] >= 8 and len(outcomes) >= 4


def test_messages_alternate_and_observations_are_marked_for_masking():
    tasks = build_tasks(DATASET_DIR, "test", 4)[-4:]
    [trajectory, *_] = run_trajectories(tasks, SimulatedTeacher(tasks, seed=3), LoopSettings())
    roles = [message["role"] for message in trajectory.messages]
    assert roles[:2] == ["system", "user"]
    assert roles[2:] == ["assistant", "user"] * (len(trajectory.steps) - 1) + ["assistant"]
    observations = [message for message in trajectory.messages[2:] if message["role"] == "user"]
    assert observations and all(message["observation"] is True for message in observations)
    assert all(message["content"].startswith("Observation: ") for message in observations)
    assert all(message.get("observation") is None for message in trajectory.messages[:2])
    assert Trajectory.from_json(json.loads(json.dumps(trajectory.to_json()))) == trajectory


def test_a_hosted_teacher_gets_the_conversation_and_the_stop_text_and_recovers_from_an_error():
    first = "Thought: look the customer up\n<code>\nprint(crm_lookup_customer(mail='ana@example.com'))\n"
    second = "Thought: the argument is email\n<code>\nfinal_answer(crm_lookup_customer(email='ana@example.com'))\n"
    with RecordingServer(
        answers((200, completion(content=first), {}), (200, completion(content=second), {}))
    ) as server:
        [trajectory] = run_trajectories([LOOKUP_TASK], compatible_engine(server), LoopSettings(max_steps=3))
    bodies = [request.json() for request in server.requests]
    assert [body["stop"] for body in bodies] == [["</code>"], ["</code>"]]
    assert [message["role"] for message in bodies[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert all(set(message) == {"role", "content"} for body in bodies for message in body["messages"])
    assert bodies[1]["messages"][2]["content"].endswith("</code>")
    error = trajectory.steps[0].execution.error
    assert error and "email" in error and bodies[1]["messages"][3]["content"].startswith("Observation: ")
    assert trajectory.stop_reason == "final_answer" and not trajectory.simulated
    check = check_answer(LOOKUP_TASK, trajectory.final_answer, trajectory.has_final_answer, trajectory.tool_calls)
    assert check.correct and trajectory.model == "qwen2.5-7b-instruct"


def test_the_local_slm_runs_the_same_loop_in_one_batch(tiny_model_dir: Path):
    """A random tiny model writes no code: every trajectory takes all its steps, each an invalid action
    answered with the no-code observation; the decode engine ran them as one batch per step."""
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    engine = SlmEngine(SlmSettings(model_path=tiny_model_dir, precision="fp32", batch_size=4, max_new_tokens=8))
    tasks = build_tasks(DATASET_DIR, "test", 2)[-3:]
    trajectories = run_trajectories(tasks, engine, LoopSettings(max_steps=2, max_new_tokens=8))
    for trajectory in trajectories:
        assert trajectory.stop_reason == "no_code" and len(trajectory.steps) == 2
        assert all(step.code is None and step.execution is None for step in trajectory.steps)
        assert trajectory.messages[-1]["content"].startswith("Observation: Error: no code block")
        assert all(step.completion_tokens == 8 for step in trajectory.steps)
        assert trajectory.model == "slm" and trajectory.engine == "transformers" and not trajectory.simulated
    assert engine.scheduler.has_work is False
