"""The main job's Phase II settings and its choice of evaluation tasks (no Ray, no model: the steps
themselves run in `make demo-codeact`, measured in README)."""

from __future__ import annotations

from collections import Counter

from ray_app.codeact.tasks import read_tasks
from ray_app.paths import DATASET_ROOT
from ray_app.pipeline.arguments import config_from_argv
from ray_app.pipeline.codeact_steps import evaluation_tasks
from ray_app.pipeline.config import PipelineConfig


def test_phase_and_codeact_budgets_come_from_the_profile_unless_given(monkeypatch):
    monkeypatch.delenv("SLM_MODEL_PATH", raising=False)
    demo = config_from_argv(["--phase", "codeact"])
    assert (demo.phase, demo.profile, demo.codeact_eval_tasks, demo.codeact_train_rows) == ("codeact", "demo", 36, 96)
    given = config_from_argv(["--phase", "all", "--codeact-train-rows", "527"])
    assert (given.phase, given.codeact_train_rows) == ("all", 527)
    full = config_from_argv(["--profile", "full", "--phase", "codeact"])
    assert (full.codeact_eval_tasks, full.codeact_train_rows) == (None, None)


def test_the_demo_evaluates_a_fixed_subset_of_test_tasks_with_the_kinds_in_turn(tmp_path):
    config = PipelineConfig(eval_root=tmp_path, codeact_eval_tasks=36).resolved()
    first = evaluation_tasks(config, DATASET_ROOT / "codeact")
    tasks = read_tasks(first)
    all_test = read_tasks(DATASET_ROOT / "codeact" / "tasks" / "test.jsonl")
    assert len(tasks) == 36 and {task.task_id for task in tasks} <= {task.task_id for task in all_test}
    assert [task.kind for task in tasks[:3]] == ["toolcall", "structured", "multistep"]
    assert max(Counter(task.kind for task in tasks).values()) - min(Counter(task.kind for task in tasks).values()) <= 2
    again = evaluation_tasks(config, DATASET_ROOT / "codeact")
    assert again == first and again.read_bytes() == first.read_bytes()
    everything = PipelineConfig(eval_root=tmp_path, profile="full", codeact_eval_tasks=None).resolved()
    assert evaluation_tasks(everything, DATASET_ROOT / "codeact") == DATASET_ROOT / "codeact" / "tasks" / "test.jsonl"
