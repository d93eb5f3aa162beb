"""`slm-swap capture` → `slm-swap data trajectories`, offline with the simulated teacher, on Ray.

The simulated teacher's plan is fixed per task by the seed, so the filter's count per reason is
known before the run; two captures and two builds of the same inputs give byte-identical datasets.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ray_app.codeact.capture import CaptureConfig, capture_tasks, run_capture
from ray_app.codeact.records import CodeactTask
from ray_app.codeact.simulated_teacher import planned_mistake
from ray_app.paths import PROJECT_ROOT
from tests.test_cli import slm_swap

DATASET_DIR = PROJECT_ROOT / "slm_swap" / "02_dataset"
# What the filter must say about each plan (simulated_teacher.py's table).
VERDICT_OF_PLAN = {
    "correct": "passed",
    "wrong_argument_fixed": "passed",
    "wrong_tool": "wrong_call",
    "no_code": "no_code",
    "runaway": "max_steps",
    "wrong_final_answer": "wrong_final_answer",
}


def dataset_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_capture_filter_build_counts_equal_the_seeded_plan_and_files_are_byte_identical(ray_session, tmp_path):
    config = CaptureConfig(out_dir=tmp_path / "first", splits=("test",), multistep_tasks=8, max_tasks=36)
    tasks, skipped = capture_tasks(config)
    assert len(tasks) == 36 and {task.kind for task in tasks} == {"toolcall", "structured", "multistep"}
    expected = Counter(VERDICT_OF_PLAN[planned_mistake(task, config.seed)] for task in tasks)
    assert len(expected) >= 4  # the plan really has failures of several kinds in it

    outcome = run_capture(config)
    assert (outcome.captured_now, outcome.already_captured, outcome.model) == (36, 0, "simulated-teacher")
    again = run_capture(config)  # resumed: nothing is captured twice
    assert (again.captured_now, again.already_captured) == (0, 36)
    second = run_capture(CaptureConfig(**{**config.__dict__, "out_dir": tmp_path / "second"}))
    assert second.captured_now == 36

    built = []
    for capture_dir, out in ((tmp_path / "first", "a"), (tmp_path / "first", "b"), (tmp_path / "second", "c")):
        result = slm_swap("data", "trajectories", "--traces", str(capture_dir / "traces.jsonl"),
                          "--out", str(tmp_path / out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        built.append(tmp_path / out)
    report = json.loads((built[0] / "filter_report.json").read_text())
    assert {reason: count for reason, count in report["counts"].items() if count} == dict(expected)
    files = dataset_files(built[0])
    assert {"train.jsonl", "derived/toolcall/test.jsonl", "derived/structured/test.jsonl", "manifest.json"} <= set(
        files
    )
    assert files == dataset_files(built[1])  # the same traces, built twice
    codeact = {name: data for name, data in files.items() if name.endswith(".jsonl") and "/" not in name}
    assert codeact == {name: data for name, data in dataset_files(built[2]).items() if name in codeact}
    rows = [json.loads(line) for line in files["train.jsonl"].decode().splitlines()]
    rows += [json.loads(line) for line in files["test.jsonl"].decode().splitlines()]
    assert 0 < len(rows) <= expected["passed"]
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)


def test_a_task_file_with_an_unknown_tool_stops_before_any_model_call(tmp_path):
    task = {
        "kind": "toolcall",
        "request": "Weather in Oslo?",
        "instruction": "",
        "tools": [{"name": "get_weather", "description": "", "parameters": {"type": "object", "properties": {}}}],
        "gold": {"name": "get_forecast", "arguments": {}},
        "source": "",
    }
    tasks_path = tmp_path / "tasks.jsonl"
    task["task_id"] = CodeactTask.from_json(task).task_id
    tasks_path.write_text("{}\n" + json.dumps(task) + "\n")
    result = slm_swap("capture", "--tasks", str(tasks_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{tasks_path}:1:" in result.stderr and f"{tasks_path}:2:" in result.stderr
    assert "unknown tool 'get_forecast'" in result.stderr
    assert not (tmp_path / "out").exists()
