"""The report's CodeAct section on results written by the project's own functions, parsed back.

Fixture: 4 test tasks (toolcall, structured, two multi-step). Trajectories built by hand with the real
records; metrics.json from `codeact_metrics` / `codeact_breakdown` (trajectories.jsonl without timings,
as the eval store writes it); decision.json from `run_codeact_decide`; filter_report.json and
manifest.json from `filter_trajectories` + `build_trajectory_datasets`.
- teacher: solves tasks 0-2 (task 0 after a refused call), fails task 3: 0.75;
- slm: solves none (no code, wrong answers): 0.0;
- slm-codeact: wrong call on task 0, solves tasks 1-2, fails 3: 0.5. So the task shown is task 1.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ray_app.atomic_files import atomic_write_json
from ray_app.codeact.records import CodeactTask, Execution, Step, ToolCallRecord, ToolSpec, Trajectory, trajectory_id
from ray_app.codeact.trajectory_dataset import build_trajectory_datasets
from ray_app.codeact.trajectory_filter import filter_trajectories
from ray_app.codeact.trajectory_trace_file import TracedTrajectory
from ray_app.decide.codeact_decide import CodeactDecideConfig, run_codeact_decide
from ray_app.eval.codeact_store import without_timings
from ray_app.metrics.codeact import CodeactEvalMetrics, codeact_breakdown, codeact_metrics
from ray_app.report import ReportError, write_report
from ray_app.report.codeact_section import render_codeact_section
from ray_app.report.codeact_task_view import pick_task
from tests.test_report import Table, near, parse_tables, same_significant

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = ToolSpec("get_weather", "Weather for a city.", CITY)
TASKS = [
    CodeactTask("toolcall", "Weather in Oslo?", (WEATHER,), {"name": "get_weather", "arguments": {"city": "Oslo"}}),
    CodeactTask("structured", "Return a=1", (), {"a": 1}, instruction="JSON with a", source="test.jsonl:7"),
    CodeactTask("multistep", "Add 2 and 3", (), 5),
    CodeactTask("multistep", "Add 1 and 4", (), 5),
]
TEACHER_MODEL = "simulated-teacher"  # who acts in the simulated teacher's trajectories
ENGINES = {
    "teacher": {"kind": "simulated", "model": "simulated-teacher", "seed": 42, "simulated": True},
    "slm": {"kind": "transformers", "model_path": "/models/tiny", "adapter_path": None, "precision": "fp32",
            "device": "cpu", "batch_size": 4, "max_new_tokens": 256, "simulated": False},
}  # fmt: skip
ABLATION = {
    "masked": {"label": "slm-codeact", "success_rate": 0.5},
    "unmasked": {"label": "slm-codeact-unmasked", "success_rate": 0.25},
    "difference": {"delta": 0.25, "interval": [-0.25, 0.75], "mcnemar_p": 1.0, "rows": 4},
    "cpu": "2 test cores",
    "train_rows": 3,
}


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST",
                 "SLM_SWAP_REQUIRE_LANGFUSE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def step(thought: str, code: str | None, observation: str = "", error=None, calls=(), answer=None) -> Step:
    execution = None
    if code is not None:
        answered = "final_answer" in code
        execution = Execution(observation, tuple(calls), answered, answer, error, duration_s=0.25)
    output = f"Thought: {thought}" + (f"\n<code>\n{code}\n</code>" if code is not None else "")
    return Step(output, thought, code, execution, prompt_tokens=120, completion_tokens=30, latency_s=0.5)


def run(task: CodeactTask, model: str, steps: list[Step]) -> Trajectory:
    answered = [s.execution for s in steps if s.execution and s.execution.has_final_answer]
    messages = [{"role": "system", "content": "tools"}, {"role": "user", "content": task.request}]
    for s in steps:
        messages.append({"role": "assistant", "content": s.model_output})
        if s.execution is not None:
            messages.append({"role": "user", "content": f"Observation: {s.execution.observation}", "observation": True})
    stop = "final_answer" if answered else ("no_code" if all(s.code is None for s in steps) else "max_steps")
    return Trajectory(
        trajectory_id=trajectory_id(task.task_id, model), task=task, model=model,
        engine="simulated" if model == TEACHER_MODEL else "transformers", simulated=model == TEACHER_MODEL,
        messages=tuple(messages), steps=tuple(steps), stop_reason=stop,  # type: ignore[arg-type]
        has_final_answer=bool(answered), final_answer=answered[-1].final_answer if answered else None,
    )  # fmt: skip


def oslo(city: str = "Oslo", error: str | None = None) -> ToolCallRecord:
    return ToolCallRecord("get_weather", {"city": city} if city else {}, error=error)


def trajectories(label: str, student_solves: tuple[int, ...] = (1, 2)) -> list[Trajectory]:
    toolcall, structured, add, add_again = TASKS
    if label == "teacher":
        teacher = TEACHER_MODEL
        refused = oslo("", "missing required parameter 'city'")
        return [
            run(toolcall, teacher, [
                step("Call it.", "get_weather()", "ToolCallError: missing city", "ToolCallError: city", [refused]),
                step("Now with the city.", "r = get_weather(city='Oslo')\nfinal_answer(r)", "sunny", calls=[oslo()],
                     answer="sunny"),
            ]),
            run(structured, teacher, [step("Return it.", "final_answer({'a': 1})", "{'a': 1}", answer={"a": 1})]),
            run(add, teacher, [step("Add.", "print(2 + 3)", "5"), step("Done.", "final_answer(5)", "5", answer=5)]),
            run(add_again, teacher, [step("Add.", "final_answer(6)", "6", answer=6)]),
        ]  # fmt: skip
    if label == "slm":
        return [
            run(toolcall, label, [step("I will explain the weather in prose.", None)]),
            run(structured, label, [step("Look first.", "print('b')", "b"),
                                    step("Return b.", "final_answer({'b': 2})", "{'b': 2}", answer={"b": 2})]),
            run(add, label, [step("Add them.", "x + 1", "NameError: x", "NameError: x"),
                             step("Again.", "final_answer(4)", "4", answer=4)]),
            run(add_again, label, [step("Hm.", None)]),
        ]  # fmt: skip
    answers = {1: ({"a": 1} if 1 in student_solves else {"a": 2}), 2: (5 if 2 in student_solves else 7)}
    return [
        run(toolcall, label, [step("Call it.", "final_answer(get_weather(city='Bergen'))", "rain",
                                   calls=[oslo("Bergen")], answer="rain")]),
        run(structured, label, [step("Build the object.", f"final_answer({answers[1]!r})", "ok", answer=answers[1])]),
        run(add, label, [step("Add 2 and 3.", f"final_answer({answers[2]})", str(answers[2]), answer=answers[2])]),
        run(add_again, label, [step("Add.", "final_answer(3)", "3", answer=3)]),
    ]  # fmt: skip


def write_label(eval_root: Path, label: str, runs: list[Trajectory]) -> None:
    """What `run_codeact_eval` writes: trajectories.jsonl without wall-clock fields, and metrics.json."""
    folder = eval_root / "codeact" / label
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(without_timings(trajectory).to_json()) + "\n" for trajectory in runs]
    (folder / "trajectories.jsonl").write_text("".join(lines), encoding="utf-8")
    engine = ENGINES["teacher"] if label == "teacher" else dict(ENGINES["slm"])
    if label not in ("teacher", "slm"):
        engine["adapter_path"] = f"/adapters/adapter_{label}"
    precision = None if label == "teacher" else {"precision": "fp32", "requested": "auto", "reason": "no bf16"}
    record = CodeactEvalMetrics(
        label, runs[0].model, "tasks/test.jsonl", codeact_metrics(runs), codeact_breakdown(runs), 4.0, engine,
        precision, "simulated" if label == "teacher" else None, f"key-{label}", {}, "trajectories.jsonl",
        "timings.jsonl", {}, {}, {}, "2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    atomic_write_json(folder / "metrics.json", record.to_json())


def write_dataset(dataset_root: Path) -> None:
    """The CodeAct dataset from teacher and student trajectories, as `slm-swap data trajectories` builds it."""
    runs = trajectories("teacher") + trajectories("slm")
    traced = [TracedTrajectory(t, f"trace-{i}", f"traces.jsonl:{i + 1}") for i, t in enumerate(runs)]
    build_trajectory_datasets(traced, filter_trajectories(runs), dataset_root / "codeact", source="traces.jsonl")


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    eval_root, dataset_root = tmp_path / "05_eval", tmp_path / "02_dataset"
    for label in ("teacher", "slm", "slm-codeact"):
        write_label(eval_root, label, trajectories(label))
    run_codeact_decide(CodeactDecideConfig(eval_root=eval_root, bootstrap_resamples=500, require_langfuse=False))
    write_dataset(dataset_root)
    atomic_write_json(eval_root / "codeact" / "masking_ablation.json", ABLATION)
    return eval_root, dataset_root


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def check_table(table: Table, eval_root: Path, dataset_root: Path) -> str:
    """Every cell against the file and field its Source line names; returns which table it was."""
    header, codeact = table.header, eval_root / "codeact"
    if header == ["model", "who acted", "engine"]:
        for label, model, engine in table.rows:
            assert f"codeact/{label}/metrics.json" in table.files
            assert model == read_json(codeact / label / "metrics.json")["model"]
            expected = {
                "teacher": "simulated: each task's reference solution acted out with planned mistakes, seed 42",
                "slm": "transformers: tiny, fp32 on cpu, batch 4, max 256 new tokens, greedy (no bf16)",
            }
            assert engine == expected.get(
                label, expected["slm"].replace("greedy", "greedy, adapter adapter_slm-codeact")
            )
        return "models"
    if header[:3] == ["model", "tasks", "success rate"]:
        for label, *cells in table.rows:
            assert f"codeact/{label}/metrics.json" in table.files
            metrics = read_json(codeact / label / "metrics.json")["metrics"]
            for field, cell in zip(table.fields, cells, strict=True):
                value = metrics[field.removeprefix("metrics.")]
                assert cell == "—" if value is None else near(cell, value, 3 if field.endswith("rate") else 1)
        return "metrics"
    if header[0] == "task kind":
        labels = [column.removesuffix(" success rate of tasks") for column in header[1:]]
        for kind, *cells in table.rows:
            for label, cell in zip(labels, cells, strict=True):
                by_kind = read_json(codeact / label / "metrics.json")["breakdown"]["success_rate_by_kind"][kind]
                assert cell == f"{by_kind['success_rate']:.3f} of {by_kind['tasks']}"
        return "kinds"
    if header[0] == "reference":
        assert table.files == ["codeact/decision.json"]
        decision = read_json(codeact / "decision.json")
        for (ref, cand, ref_rate, cand_rate, delta, interval, p, discordant), field in zip(
            table.rows, table.fields, strict=True
        ):
            gap = decision
            for key in field.split("."):
                gap = gap[key]
            assert near(ref_rate, gap[ref], 3) and near(cand_rate, gap[cand], 3) and near(delta, gap["delta"], 3)
            low, high = interval.strip("[]").split(", ")
            assert near(low, gap["interval_95"][0], 3) and near(high, gap["interval_95"][1], 3)
            assert same_significant(p, gap["mcnemar_p"], 3)
            assert discordant == f"{gap['discordant'][f'{ref}_only']} / {gap['discordant'][f'{cand}_only']}"
        return "gaps"
    if header[0] == "reason":
        assert table.files[0].endswith("codeact/filter_report.json")
        report = read_json(dataset_root / "codeact" / "filter_report.json")
        assert [row[0] for row in table.rows] == list(report["counts"])
        for reason, count, *per_kind in table.rows:
            assert int(count) == report["counts"][reason]
            for kind, cell in zip(header[2:], per_kind, strict=True):
                assert int(cell) == report["per_kind"][kind].get(reason, 0)
        return "filter"
    if header[0] == "split":
        counts = read_json(dataset_root / "codeact" / "manifest.json")["counts"]
        for split, *cells in table.rows:
            assert [int(cell) for cell in cells] == [counts[track][split] for track in header[1:]]
        return "manifest"
    if header[0] == "loss on":
        assert table.files == ["codeact/masking_ablation.json"]
        ablation = read_json(codeact / "masking_ablation.json")
        for (_, label, rate), side in zip(table.rows, ("masked", "unmasked"), strict=True):
            assert label == ablation[side]["label"] and near(rate, ablation[side]["success_rate"], 3)
        return "ablation"
    if header[0] == "delta":
        difference = read_json(codeact / "masking_ablation.json")["difference"]
        delta, means, interval, p, tasks = table.rows[0]
        assert near(delta, difference["delta"], 3) and means == "masked - unmasked"
        assert interval == "[{:+.3f}, {:+.3f}]".format(*difference["interval"])
        assert same_significant(p, difference["mcnemar_p"], 3) and int(tasks) == difference["rows"]
        return "difference"
    raise AssertionError(f"a table this test does not check: {header}")


def test_every_table_number_equals_the_file_it_names(roots):
    eval_root, dataset_root = roots
    markdown, read = render_codeact_section(eval_root, dataset_root)
    tables = parse_tables(markdown)
    kinds = [check_table(table, eval_root, dataset_root) for table in tables]
    assert kinds == ["models", "metrics", "kinds", "gaps", "filter", "manifest", "ablation", "difference"]
    # By hand from the fixture: teacher 3 of 4, slm 0, slm-codeact tasks 1 and 2.
    metrics = tables[1]
    assert [row[:3] for row in metrics.rows] == [["teacher", "4", "0.750"], ["slm", "4", "0.000"],
                                                 ["slm-codeact", "4", "0.500"]]  # fmt: skip
    gaps = tables[3]
    assert [row[:5] for row in gaps.rows] == [
        ["teacher", "slm", "0.750", "0.000", "+0.750"],
        ["teacher", "slm-codeact", "0.750", "0.500", "+0.250"],
        ["slm", "slm-codeact", "0.000", "0.500", "-0.500"],
    ]
    assert gaps.rows[0][-1] == "3 / 0" and gaps.rows[1][-1] == "1 / 0"
    assert "FINE_TUNE = 1: slm below teacher on success_rate (delta 0.75) (4 test tasks, teacher simulated" in markdown
    assert "- `slm-codeact`: slm-codeact worse than teacher; 4 rows cannot tell them apart" in markdown
    # Parity at 2 points. slm: b=3 of 4, a resample has delta X/4 with X ~ Bin(4, 0.75), P(X=0) = 0.004 < 5%:
    # the lower bound is >= 0.25 > 0.02, worse. slm-codeact: b=1 of 4, P(X=0) = 0.32 > 5%: lower bound 0,
    # cannot tell; delta 0.25, s2 = 0.25 - 0.0625 = 0.1875: 6.182557 x 0.1875 / 0.23^2 = 21.9 → 22 rows.
    bound = "(95% one-sided paired bootstrap bound)"
    assert f"- `slm`: worse than the teacher by more than 2 points on success_rate {bound}." in markdown
    undecided = "cannot tell with 4 rows — about 22 rows would decide at this margin (undecided: success_rate)"
    assert f"- `slm-codeact`: {undecided}." in markdown
    # 8 trajectories: teacher's 3 successes pass (task 0 recovered), task 3 wrong; slm's four fail.
    assert "gave 3 of 8 captured trajectories the verdict `passed`; 1 of those recovered" in markdown
    codeact = eval_root / "codeact"
    assert read == [
        codeact / "decision.json",
        *(codeact / label / "metrics.json" for label in ("teacher", "slm", "slm-codeact")),
        *(codeact / label / "trajectories.jsonl" for label in ("teacher", "slm-codeact", "slm")),
        dataset_root / "codeact" / "filter_report.json",
        dataset_root / "codeact" / "manifest.json",
        codeact / "masking_ablation.json",
    ]


def test_side_by_side_shows_the_first_task_both_solved(roots):
    eval_root, dataset_root = roots
    markdown, _ = render_codeact_section(eval_root, dataset_root)
    shown = markdown.split("### One test task, side by side", 1)[1]
    task = TASKS[1]
    assert (
        f"Task `{task.task_id}` (structured, line 2 of `codeact/teacher/trajectories.jsonl`, from `test.jsonl:7`)"
        in shown
    )
    assert "the first task in that file that the teacher and `slm-codeact` both solved" in shown
    assert "```text\nReturn a=1\n\nInstruction: JSON with a\n```" in shown
    headings = [line for line in shown.split("\n") if line.startswith("#### ")]
    assert headings == ["#### teacher (`teacher`)", "#### SLM + adapter (`slm-codeact`)",
                        "#### base SLM (`slm`, first step only)"]  # fmt: skip
    teacher, student, base = shown.split("#### ")[1:]
    assert "```python\nfinal_answer({'a': 1})\n```" in teacher and "Thought:\n\n```text\nReturn it.\n```" in teacher
    assert "check: `correct`" in teacher and "check: `correct`" in student
    assert "Build the object." in student and "Observation:\n\n```text\nok\n```" in student
    assert "2 step(s)" in base and "check: `wrong_final_answer`" in base
    assert "Look first." in base and "**Step 2.**" not in base and "Return b." not in base


def test_side_by_side_falls_back_to_the_first_task_the_teacher_solved(roots):
    eval_root, dataset_root = roots
    write_label(eval_root, "slm-codeact", trajectories("slm-codeact", student_solves=()))
    markdown, _ = render_codeact_section(eval_root, dataset_root)
    shown = markdown.split("### One test task, side by side", 1)[1]
    assert f"Task `{TASKS[0].task_id}` (toolcall, line 1 of" in shown
    assert "the first task in that file that the teacher solved (`slm-codeact` solved none of them)" in shown
    teacher = shown.split("#### ")[1]
    # The refused first call, its error and the observation, then the recovery.
    assert "**Step 1.**" in teacher and "**Step 2.**" in teacher
    assert "Observation (raised `ToolCallError: city`):\n\n```text\nToolCallError: missing city\n```" in teacher
    base = shown.split("#### ")[3]
    assert "No code block (an invalid action); the model wrote:" in base and "**Step 2.**" not in base
    # A results file changed after decide: the decision says so.
    assert "Warning: `codeact/slm-codeact/metrics.json` changed after decision.json was written" in markdown


def test_pick_task_is_the_first_teacher_success_the_student_ran():
    teacher, student = trajectories("teacher"), trajectories("slm-codeact")
    assert pick_task(teacher, student) == (1, True)
    assert pick_task(teacher, trajectories("slm-codeact", student_solves=(2,))) == (2, True)
    assert pick_task(teacher, student[1:2]) == (1, True)
    assert pick_task(teacher, trajectories("slm")) == (0, False)
    assert pick_task(teacher[3:], student) is None and pick_task(teacher, []) is None


def test_missing_results_name_the_command_that_writes_them(tmp_path):
    eval_root = tmp_path / "05_eval"
    write_label(eval_root, "teacher", trajectories("teacher"))
    markdown, read = render_codeact_section(eval_root, tmp_path / "02_dataset")
    assert read == [eval_root / "codeact" / "teacher" / "metrics.json"]
    for line in (
        "No `codeact/decision.json` yet: run `slm-swap decide --track codeact`",
        "`slm`: not evaluated: run `slm-swap eval --track codeact --model slm`.",
        "`slm-codeact`: not evaluated: train it (`slm-swap train --track codeact`), then run "
        "`slm-swap eval --track codeact --model slm --adapter ADAPTER_FOLDER --label slm-codeact`.",
        "Not compared: no `codeact/decision.json`; run `slm-swap decide --track codeact`.",
        "build the CodeAct dataset with `slm-swap data trajectories --traces",
        "Not run: `python benchmarks/codeact_masking.py` writes `codeact/masking_ablation.json`.",
        "Needs `codeact/slm-codeact/trajectories.jsonl` (`slm-swap eval --track codeact --model slm --adapter",
    ):
        assert line in markdown, line
    metrics = next(table for table in parse_tables(markdown) if table.header[1] == "tasks")
    assert metrics.rows[1] == ["slm", *["—"] * 10]


def test_report_md_ends_with_the_codeact_section_byte_for_byte(roots, tmp_path):
    eval_root, dataset_root = roots
    outcome = write_report(eval_root, dataset_root)
    first = outcome.report_path.read_bytes()
    section, read = render_codeact_section(eval_root, dataset_root)
    assert first.decode().endswith("\n\n" + section + "\n") and outcome.sources[-len(read) :] == read
    assert write_report(eval_root, dataset_root).report_path.read_bytes() == first
    without = write_report(tmp_path / "no_codeact", dataset_root).report_path.read_text(encoding="utf-8")
    assert "CodeAct" not in without


def test_malformed_files_name_the_file_and_field(roots):
    eval_root, dataset_root = roots
    ablation = eval_root / "codeact" / "masking_ablation.json"
    atomic_write_json(ablation, {**ABLATION, "difference": {**ABLATION["difference"], "interval": [0.1]}})
    with pytest.raises(ReportError, match=r"masking_ablation.json: field 'difference.interval' must be .*codeact_mask"):
        render_codeact_section(eval_root, dataset_root)
    metrics = eval_root / "codeact" / "slm" / "metrics.json"
    atomic_write_json(metrics, {**read_json(metrics), "metrics": {"tasks": 4}})
    with pytest.raises(ReportError, match=r"slm/metrics.json: field 'metrics.success_rate' missing; re-run `slm-swap"):
        render_codeact_section(eval_root, dataset_root)
    lines = (eval_root / "codeact" / "teacher" / "trajectories.jsonl").read_text().splitlines()
    (eval_root / "codeact" / "teacher" / "trajectories.jsonl").write_text(lines[0] + "\n{}\n")
    atomic_write_json(metrics, replace(CodeactEvalMetrics.read(eval_root / "codeact" / "teacher" / "metrics.json"),
                                       model_label="slm").to_json())  # fmt: skip
    with pytest.raises(ReportError, match=r"teacher/trajectories.jsonl:2: not a trajectory"):
        render_codeact_section(eval_root, dataset_root)
