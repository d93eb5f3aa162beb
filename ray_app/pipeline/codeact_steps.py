"""The main job's Phase II steps (`--phase codeact`, or `all` after the seed's ten), top to bottom.

1. capture: the teacher as a CodeAct agent over every task built from the committed splits (the
   simulated teacher offline, the hosted one with AZURE_* / SLM_SWAP_TEACHER_*), one trace per
   trajectory in `slm_swap/01_source/trajectories/<teacher>/traces.jsonl` (resumes by itself);
2. filter + build: verdicts and reason counts → `<dataset_root>/codeact/` (with the simulated teacher
   these are the committed files: the step says whether it rebuilt them byte for byte);
3. teacher on the CodeAct test tasks (the demo profile takes a fixed subset, kinds in turn);
4. base SLM on the same tasks, through Ray Data (the same loop and sandbox);
5. decide: success rate teacher vs SLM, paired interval and McNemar, FINE_TUNE by the seed's rule;
6. train the `codeact` adapter with the loss on the student's turns only (when FINE_TUNE=1);
7. SLM + codeact adapter on the same tasks;
8. decide again, with the adapter (the report's CodeAct section reads it).

Each step is skipped when its inputs are unchanged (a hash in `pipeline_state.json`, or the
evaluation's and training's own run keys) and says so, so a re-run continues where it stopped.
"""

from __future__ import annotations

import filecmp
import tempfile
from pathlib import Path

from rich.console import Console

from ray_app.codeact.capture import CaptureConfig, run_capture
from ray_app.codeact.loop import LoopSettings
from ray_app.codeact.tasks import kinds_in_turn, read_tasks, write_tasks
from ray_app.decide.codeact_decide import CodeactDecideConfig, run_codeact_decide
from ray_app.eval.codeact_eval import CodeactEvalConfig, run_codeact_eval
from ray_app.models.adapter_folder import is_adapter_folder
from ray_app.pipeline.config import PipelineConfig
from ray_app.pipeline.ledger import StepLedger, file_hash, inputs_hash

console = Console(stderr=True)
CODEACT_STEPS = 8
DATASET_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "tasks/train.jsonl", "tasks/val.jsonl",
                 "tasks/test.jsonl", "filter_report.json")  # fmt: skip


def say(step: int, text: str) -> None:
    console.print(f"[bold]codeact {step}/{CODEACT_STEPS}[/bold] {text}", highlight=False)


def detail(text: str) -> None:
    console.print(f"      {text}", highlight=False)


def codeact_teacher(config: PipelineConfig) -> str:
    """hosted when a hosted teacher is configured (as evaluation decides), else the simulated one."""
    from ray_app.eval.codeact_eval import teacher_mode_of

    mode = config.codeact_teacher
    return teacher_mode_of(CodeactEvalConfig(model="teacher", teacher_mode=mode))  # type: ignore[arg-type]


def capture_trajectories(config: PipelineConfig, teacher: str) -> Path:
    """Step 1: the teacher's trajectories (capture skips every trajectory it already has)."""
    say(1, f"capture: the {teacher} teacher as a CodeAct agent over the tasks of every split")
    outcome = run_capture(
        CaptureConfig(
            teacher=teacher,  # type: ignore[arg-type]
            dataset_dir=config.dataset_root,
            multistep_tasks=config.codeact_multistep_tasks,
            seed=config.seed,
        )
    )
    detail(f"{outcome.captured_now} captured now, {outcome.already_captured} already there → {outcome.traces_path}")
    return outcome.traces_path


def build_dataset(config: PipelineConfig, ledger: StepLedger, traces_path: Path, teacher: str) -> Path:
    """Step 2: filter + build into <dataset_root>/codeact/; the simulated teacher's must equal the committed."""
    from ray_app.codeact.trajectory_dataset import build_trajectory_datasets
    from ray_app.codeact.trajectory_filter import REASONS, FilterSettings, filter_trajectories
    from ray_app.codeact.trajectory_trace_file import read_trajectory_trace_file

    out = config.dataset_root / "codeact"
    say(2, f"filter + build: trajectories → {out}")
    digest = inputs_hash({"traces": file_hash(traces_path), "seed": config.seed})
    outputs = [out / name for name in DATASET_FILES]
    if ledger.is_done("codeact_build", digest, outputs):
        detail(f"skipped: the traces are unchanged (sha256 {digest[:12]})")
        return out
    read = read_trajectory_trace_file(traces_path)
    report = filter_trajectories([item.trajectory for item in read.traced], FilterSettings())
    detail(" ".join(f"{reason}={report.counts[reason]}" for reason in REASONS if report.counts[reason]))
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch)
        build_trajectory_datasets(
            read.traced, report, built, source=traces_path.name, skipped_while_reading=read.skipped
        )
        same = all((out / name).is_file() and filecmp.cmp(built / name, out / name, shallow=False)
                   for name in DATASET_FILES)  # fmt: skip
        if same:
            detail("the committed CodeAct dataset, rebuilt byte for byte")
        else:
            build_trajectory_datasets(
                read.traced, report, out, source=traces_path.name, skipped_while_reading=read.skipped
            )
            detail(f"written ({teacher} teacher's trajectories differ from the committed ones)")
    ledger.record("codeact_build", digest, outputs)
    return out


def evaluation_tasks(config: PipelineConfig, dataset: Path) -> Path:
    """The test tasks to evaluate on: all of them, or (demo) the first N with the kinds taken in turn."""
    tasks_path = dataset / "tasks" / "test.jsonl"
    if config.codeact_eval_tasks is None:
        return tasks_path
    chosen = kinds_in_turn(read_tasks(tasks_path))
    subset = config.eval_root / "codeact" / f"test_tasks_first_{config.codeact_eval_tasks}.jsonl"
    chosen = chosen[: config.codeact_eval_tasks]
    if not subset.is_file() or [task.task_id for task in read_tasks(subset)] != [task.task_id for task in chosen]:
        write_tasks(subset, chosen)
    return subset


def evaluate(config: PipelineConfig, step: int, model: str, tasks_path: Path, teacher: str, model_path: str,
             adapter: Path | None = None) -> None:  # fmt: skip
    label = "teacher" if model == "teacher" else ("slm-codeact" if adapter else "slm")
    say(step, f"{label} on {tasks_path.name} (the CodeAct loop{' through Ray Data' if model == 'slm' else ''})")
    outcome = run_codeact_eval(
        CodeactEvalConfig(
            model=model,  # type: ignore[arg-type]
            tasks_path=tasks_path,
            eval_root=config.eval_root,
            teacher_mode=teacher,  # type: ignore[arg-type]
            seed=config.seed,
            model_path=model_path,
            adapter_path=adapter,
            precision=config.slm_precision,  # type: ignore[arg-type]
            loop=LoopSettings(max_new_tokens=config.max_new_tokens or LoopSettings().max_new_tokens),
        )
    )
    metrics = outcome.metrics.metrics
    reused = "reused (run key unchanged)" if outcome.reused else f"{outcome.ran_now} trajectories run"
    detail(
        f"{label}: success {metrics['success_rate']:.2f}, valid actions {metrics['valid_action_rate']:.2f}; {reused}"
    )


def decide(config: PipelineConfig, step: int, what: str):
    say(step, what)
    decision = run_codeact_decide(
        CodeactDecideConfig(eval_root=config.eval_root, seed=config.seed, parity_margin=config.parity_margin)
    )
    detail(f"codeact: FINE_TUNE={decision.fine_tune} ({decision.reason})")
    return decision


def train_codeact(config: PipelineConfig, model_path: str, fine_tune: int) -> str:
    """Step 6: the codeact adapter, loss on the student's turns only (run key: skipped when up to date)."""
    from ray_app.train.config import TrainConfig
    from ray_app.train.train import run_train

    if not config.train or fine_tune != 1:
        say(6, "train codeact: " + ("skipped (--no-train)" if not config.train else "not needed (FINE_TUNE=0)"))
        return "not trained"
    rows = f"first {config.codeact_train_rows} rows" if config.codeact_train_rows else "whole train split"
    say(6, f"train codeact on Ray Train ({rows}; loss on the student's turns only; LoRA r=64, lr 2e-4, 1 epoch)")
    result = run_train(
        TrainConfig(
            track="codeact",
            model_path=model_path,
            dataset_root=config.dataset_root,
            adapter_root=config.adapter_root,
            storage_path=config.storage_path,
            max_train_rows=config.codeact_train_rows,
            max_val_rows=config.max_val_rows,
            cpu_bf16=config.train_cpu_bf16,
            gradient_checkpointing=bool(config.train_gradient_checkpointing),
            per_device_batch_size=config.train_batch_size,  # type: ignore[arg-type]
            gradient_accumulation_steps=config.gradient_accumulation_steps,  # type: ignore[arg-type]
            num_workers=config.train_workers,
            save_steps=config.train_save_steps,
            seed=config.seed,
            eval_root=config.eval_root,
        )
    )
    where = f" → {result.adapter_dir}" if result.adapter_dir else ""
    detail(("trained" if result.trained else result.reason) + where)
    return ("trained" if result.trained else result.reason) + where


def run_codeact_steps(config: PipelineConfig, ledger: StepLedger, model_path: str) -> dict[str, object]:
    """Phase II, steps 1-8 (see the module docstring); returns what the job's summary prints."""
    teacher = codeact_teacher(config)
    traces_path = capture_trajectories(config, teacher)
    dataset = build_dataset(config, ledger, traces_path, teacher)
    tasks_path = evaluation_tasks(config, dataset)
    evaluate(config, 3, "teacher", tasks_path, teacher, model_path)
    evaluate(config, 4, "slm", tasks_path, teacher, model_path)
    decision = decide(config, 5, "decide: success rate, teacher vs base SLM")
    trained = train_codeact(config, model_path, decision.fine_tune)
    adapter = config.adapter_root / "adapter_codeact"
    if is_adapter_folder(adapter):
        evaluate(config, 7, "slm", tasks_path, teacher, model_path, adapter)
    else:
        say(7, f"SLM + codeact adapter: no adapter in {adapter}")
    decision = decide(config, 8, "decide again, with the adapter")
    return {"codeact_fine_tune": decision.fine_tune, "codeact_trained": trained,
            "codeact_decision": str(config.eval_root / "codeact" / "decision.json")}  # fmt: skip
