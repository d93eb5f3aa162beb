"""CodeAct evaluation and decision: metrics by hand, then real Ray runs of the simulated teacher and the
tiny random SLM on the same test tasks, resumed, rerun byte for byte, and decided.

The simulated teacher's plan is fixed per task by the seed (`planned_mistake`), so its successes and
recoveries are known before the run; the tiny random SLM never answers right, so FINE_TUNE=1 and the
McNemar p is 2 * (1/2)^b with b the teacher's successes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ray_app.codeact.capture import CaptureConfig, capture_tasks
from ray_app.codeact.loop import LoopSettings
from ray_app.codeact.records import CodeactTask, Execution, Step, ToolCallRecord, ToolSpec, Trajectory
from ray_app.codeact.simulated_teacher import planned_mistake
from ray_app.codeact.tasks import write_tasks
from ray_app.decide.codeact_decide import CodeactDecideConfig, CodeactDecision, run_codeact_decide
from ray_app.decide.decide_config import DecideError
from ray_app.eval.codeact_eval import CodeactEvalConfig, run_codeact_eval
from ray_app.metrics.codeact import CodeactEvalMetrics, codeact_breakdown, codeact_metrics
from tests.test_cli import slm_swap

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = ToolSpec("get_weather", "Weather for a city.", CITY)
TOOLCALL = CodeactTask(
    "toolcall", "Weather in Oslo?", (WEATHER,), {"name": "get_weather", "arguments": {"city": "Oslo"}}
)
STRUCTURED = CodeactTask("structured", "Return a=1", (), {"a": 1}, instruction="JSON with a")
MULTISTEP = CodeactTask("multistep", "Add 2 and 3", (), 5)
LATENCY_S, DURATION_S = 0.5, 0.25  # every model turn and every execution below


def step(code: str | None, error: str | None = None, calls=(), answer=None, answered=False) -> Step:
    execution = None
    if code is not None:
        execution = Execution("observed", tuple(calls), answered, answer, error, duration_s=DURATION_S)
    return Step("Thought: ...", "...", code, execution, prompt_tokens=100, completion_tokens=10, latency_s=LATENCY_S)


def trajectory(task: CodeactTask, steps: list[Step], stop: str) -> Trajectory:
    answered = [s.execution for s in steps if s.execution and s.execution.has_final_answer]
    return Trajectory(
        trajectory_id=task.task_id, task=task, model="m", engine="simulated", simulated=True, messages=(),
        steps=tuple(steps), stop_reason=stop, has_final_answer=bool(answered),  # type: ignore[arg-type]
        final_answer=answered[-1].final_answer if answered else None,
    )  # fmt: skip


def hand_built() -> list[Trajectory]:
    refused = ToolCallRecord("get_weather", {}, error="missing required parameter 'city'")
    accepted = ToolCallRecord("get_weather", {"city": "Oslo"})
    return [
        # 1. toolcall: the stub refuses the first call (an error), the second is right: success, recovered
        trajectory(TOOLCALL, [step("get_weather()", error="ToolCallError: city", calls=[refused]),
                              step("r = get_weather(city='Oslo')", calls=[accepted], answer="ok", answered=True)],
                   "final_answer"),
        # 2. structured: a turn without code (not an error), then the right answer: success, not recovered
        trajectory(STRUCTURED, [step(None), step("final_answer({'a': 1})", answer={"a": 1}, answered=True)],
                   "final_answer"),
        # 3. multistep: two errors, then a wrong answer: a failure that had errors
        trajectory(MULTISTEP, [step("x", error="NameError: x"), step("y", error="NameError: y"),
                               step("final_answer(6)", answer=6, answered=True)], "final_answer"),
        # 4. multistep again (another request): prose only, no code at all
        trajectory(CodeactTask("multistep", "Add 1 and 4", (), 5), [step(None)], "no_code"),
    ]  # fmt: skip


def test_codeact_metrics_equal_the_counts_a_person_makes():
    metrics = codeact_metrics(hand_built())
    # steps 2+2+3+1 = 8, with code 2+1+3+0 = 6, executions 2+1+3+0 = 6 of which 1+0+2+0 = 3 raised
    assert metrics["tasks"] == 4 and metrics["successes"] == 2 and metrics["success_rate"] == 0.5
    assert (metrics["steps"], metrics["valid_actions"], metrics["valid_action_rate"]) == (8, 6, 0.75)
    assert (metrics["executions"], metrics["tool_errors"], metrics["tool_error_rate"]) == (6, 3, 0.5)
    # errored: trajectories 1 and 3; recovered (succeeded after an error): 1 only
    assert (metrics["errored_trajectories"], metrics["recovered"], metrics["recovery_rate"]) == (2, 1, 0.5)
    assert metrics["mean_steps"] == 2.0
    assert (metrics["mean_prompt_tokens"], metrics["mean_completion_tokens"]) == (200.0, 20.0)
    # latency per task = turns x 0.5 s + executions x 0.25 s: 1.5, 1.25, 2.25, 0.5
    assert (metrics["mean_latency_s"], metrics["latency_p50_s"]) == (1.375, 1.375)
    breakdown = codeact_breakdown(hand_built())
    assert breakdown["answer_codes"] == {"correct": 2, "no_final_answer": 1, "wrong_final_answer": 1}
    assert breakdown["stop_reasons"] == {"final_answer": 3, "no_code": 1}
    assert breakdown["success_rate_by_kind"]["multistep"] == {"tasks": 2, "success_rate": 0.0}


def test_rates_without_a_denominator_are_null_not_zero():
    metrics = codeact_metrics(hand_built()[3:])  # no code ran, nothing raised
    assert metrics["tool_error_rate"] is None and metrics["recovery_rate"] is None
    assert metrics["success_rate"] == 0.0 and metrics["valid_action_rate"] == 0.0


@pytest.fixture(scope="module")
def test_tasks(tmp_path_factory) -> tuple[Path, list[CodeactTask]]:
    """10 test tasks of every kind from the committed seed splits (the CodeAct dataset's tasks file shape)."""
    tasks, _ = capture_tasks(CaptureConfig(splits=("test",), multistep_tasks=4, max_tasks=10))
    path = write_tasks(tmp_path_factory.mktemp("tasks") / "test.jsonl", tasks)
    return path, tasks


def eval_spans(eval_root: Path, label: str) -> list[dict]:
    traces = [json.loads(path.read_text()) for path in sorted((eval_root / "traces").glob(f"eval-codeact-{label}-*"))]
    return [span for trace in traces for span in trace["spans"]]


def test_teacher_and_tiny_slm_evaluated_resumed_rerun_and_decided(ray_session, tiny_model_dir, test_tasks, tmp_path):
    tasks_path, tasks = test_tasks
    assert {task.kind for task in tasks} == {"toolcall", "structured", "multistep"}
    root = tmp_path / "eval"
    teacher = CodeactEvalConfig(
        model="teacher", teacher_mode="simulated", tasks_path=tasks_path, eval_root=root, trajectories_per_call=4
    )  # groups of 4, 4, 2
    outcome = run_codeact_eval(teacher)
    folder = root / "codeact" / "teacher"
    assert (outcome.ran_now, outcome.reused, outcome.output_dir) == (10, False, folder)
    lines = (folder / "trajectories.jsonl").read_text().splitlines()
    written = [Trajectory.from_json(json.loads(line)) for line in lines]
    assert [t.task.task_id for t in written] == [task.task_id for task in tasks]  # task order
    steps = [step for written_trajectory in written for step in written_trajectory.steps]
    assert all(s.latency_s == 0 and (s.execution is None or s.execution.duration_s == 0) for s in steps)
    timings = [json.loads(line) for line in (folder / "timings.jsonl").read_text().splitlines()]
    assert any(duration for line in timings for duration in line["duration_s"])  # the sandbox's real time, kept here

    plans = [planned_mistake(task, 42) for task in tasks]
    record = CodeactEvalMetrics.read(folder / "metrics.json")
    assert record.to_json() == json.loads((folder / "metrics.json").read_text())
    assert record.metrics["successes"] == sum(plan in ("correct", "wrong_argument_fixed") for plan in plans)
    assert record.metrics["recovered"] == plans.count("wrong_argument_fixed") > 0
    assert (record.teacher_mode, record.model, record.precision) == ("simulated", "simulated-teacher", None)
    spans = eval_spans(root, "teacher")
    assert sorted(span["name"] for span in spans) == sorted(f"trajectory {task.task_id}" for task in tasks)
    assert all(span["output"]["answer"] for span in spans) and len(spans[0]["events"]) >= 1  # one event per step

    first = (folder / "trajectories.jsonl").read_bytes()
    again = run_codeact_eval(teacher)
    assert (again.reused, again.ran_now) == (True, 0) and (folder / "trajectories.jsonl").read_bytes() == first
    (folder / "trajectories.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last trajectory lost
    resumed = run_codeact_eval(teacher)
    assert (resumed.reused, resumed.ran_now) == (False, 1)  # its group ran again; only it was written
    assert (folder / "trajectories.jsonl").read_bytes() == first

    loop = LoopSettings(max_steps=2, max_new_tokens=12)
    slm = CodeactEvalConfig(
        model="slm", model_path=str(tiny_model_dir), precision="fp32", tasks_path=tasks_path, eval_root=root,
        trajectories_per_call=5, loop=loop,
    )  # fmt: skip
    slm_outcome = run_codeact_eval(slm)
    assert slm_outcome.metrics.metrics["success_rate"] == 0.0  # random weights never solve a task
    assert slm_outcome.metrics.precision["precision"] == "fp32" and slm_outcome.metrics.engine["kind"] == "transformers"
    rerun = run_codeact_eval(CodeactEvalConfig(**{**slm.__dict__, "eval_root": tmp_path / "rerun"}))
    assert rerun.ran_now == 10
    slm_bytes = (root / "codeact" / "slm" / "trajectories.jsonl").read_bytes()
    assert (tmp_path / "rerun" / "codeact" / "slm" / "trajectories.jsonl").read_bytes() == slm_bytes  # greedy

    # The adapted student's folder (here: the base SLM's results under the adapter's label).
    shutil.copytree(root / "codeact" / "slm", root / "codeact" / "slm-codeact")
    decision = run_codeact_decide(CodeactDecideConfig(eval_root=root, bootstrap_resamples=2000))
    path = root / "codeact" / "decision.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["fine_tune"] == 1 and CodeactDecision.read(path).to_json() == on_disk
    gap = decision.teacher_vs_slm.core["success_rate"]
    b = record.metrics["successes"]
    assert (gap.reference_rate, gap.candidate_rate, gap.reference_only, gap.candidate_only) == (b / 10, 0.0, b, 0)
    assert gap.mcnemar_p == pytest.approx(min(1.0, 2 * 0.5**b), rel=1e-5)
    assert gap.interval_95[0] <= gap.delta <= gap.interval_95[1] and gap.delta == b / 10
    assert set(decision.models) == {"teacher", "slm", "slm-codeact"}
    assert decision.adapted["slm-codeact"].vs_slm.core["success_rate"].delta == 0.0
    assert decision.adapted["slm-codeact"].vs_teacher.core["success_rate"].delta == b / 10
    assert "valid_action_rate" in decision.teacher_vs_slm.info
    # The parity verdict on success rate, beside the rule: both students against the teacher, not against each other.
    assert on_disk["config"]["parity_margin"] == 0.02 and list(decision.parity()) == ["slm", "slm-codeact"]
    assert decision.adapted["slm-codeact"].vs_slm.parity is None

    result = slm_swap("decide", "--track", "codeact", "--eval-root", str(root))
    assert result.returncode == 0, result.stderr
    assert "FINE_TUNE=1" in result.stderr and "codeact: slm against the teacher: " in result.stderr


def test_decide_names_the_stale_file_when_tasks_differ(tmp_path):
    folder = tmp_path / "codeact"
    for label, task in (("teacher", TOOLCALL), ("slm", STRUCTURED)):
        (folder / label).mkdir(parents=True)
        trajectories = [trajectory(task, [step(None)], "no_code")]
        (folder / label / "trajectories.jsonl").write_text(json.dumps(trajectories[0].to_json()) + "\n")
        record = CodeactEvalMetrics(
            label, "m", "tasks.jsonl", codeact_metrics(trajectories), {}, 1.0, {"kind": "simulated"}, None,
            None, "key", {}, "t", "t", {}, {}, {}, "now",
        )  # fmt: skip
        (folder / label / "metrics.json").write_text(json.dumps(record.to_json()))
    with pytest.raises(DecideError, match=r"teacher/trajectories.jsonl:1 and .*slm/trajectories.jsonl:1: task"):
        run_codeact_decide(CodeactDecideConfig(eval_root=tmp_path))


def test_eval_codeact_flags_are_checked_before_anything_runs(tmp_path):
    result = slm_swap("eval", "--track", "codeact", "--model", "teacher", "--teacher-mode", "replay",
                      "--eval-root", str(tmp_path))  # fmt: skip
    assert result.returncode == 2 and "simulated or hosted" in result.stderr
    result = slm_swap("eval", "--track", "codeact", "--model", "teacher", "--tasks", str(tmp_path / "none.jsonl"),
                      "--eval-root", str(tmp_path))  # fmt: skip
    assert result.returncode == 2 and "slm-swap data trajectories" in result.stderr
    assert not (tmp_path / "codeact").exists()
