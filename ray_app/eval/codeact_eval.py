"""`slm-swap eval --track codeact`: one model runs the CodeAct loop on the test tasks through Ray Data.

The student (the SLM, with or without the codeact adapter) runs the same loop and sandbox as the
teacher (`codeact.loop`): the tasks are cut once into fixed groups of `trajectories_per_call`, and a
pool of Ray Data actors steps each group's trajectories together (`codeact.ray_runner`): one batched
generation per step for every unfinished trajectory, then their executions. The run key hashes the
tasks file and everything the trajectories depend on; a finished folder with the same key is skipped,
and an unfinished one (or a finished one missing lines) is resumed: trajectories already written are
kept and only the groups missing one run again (whole, so the same trajectories decode together).

Writes `<eval_root>/codeact/<label>/` (label `teacher`, `slm`, `slm-codeact`):
- `trajectories.jsonl`: one `Trajectory.to_json()` per task, in the tasks file's order, with the wall-clock
  fields (each step's `latency_s`, each execution's `duration_s`) set to 0, so that a greedy or
  simulated engine gives the same bytes on every run; the measured values go to
- `timings.jsonl`: `task_id`, `trajectory_id`, `latency_s` and `duration_s` per step;
- `metrics.json`: the `CodeactEvalMetrics` record (`metrics/codeact.py`: rates, engine, precision, run key).
While it runs: `trajectories.partial.jsonl` (appended per group, timings included) and `run_state.json`.
One trace per run (`tracing.start_run_trace`, kind "eval") with a span per trajectory run now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ray_app.atomic_files import atomic_write_json
from ray_app.codeact.loop import LoopSettings
from ray_app.codeact.ray_runner import EngineSpec, StepBar, agent_model_path, run_groups_on_ray
from ray_app.codeact.records import CodeactTask, Trajectory
from ray_app.engines.decode.engine import ENGINE_IDENTITY
from ray_app.engines.precision import Precision
from ray_app.eval.codeact_store import TrajectoryStore
from ray_app.eval.evaluate import console, progress_bar, run_key_of
from ray_app.eval.run_facts import run_facts
from ray_app.metrics.codeact import CODEACT_TRACK, CodeactEvalMetrics, codeact_breakdown, codeact_metrics
from ray_app.models.adapter_folder import is_adapter_folder, not_an_adapter_message
from ray_app.models.fingerprint import adapter_fingerprint, file_sha256, folder_fingerprint
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, project_relative
from ray_app.record_fields import RecordError

DEFAULT_TASKS = DATASET_ROOT / "codeact" / "tasks" / "test.jsonl"
METRICS_FILE = "metrics.json"


class CodeactEvalError(ValueError):
    """The CodeAct evaluation cannot start: no tasks file, a bad adapter folder, a bad setting."""


@dataclass(frozen=True)
class CodeactEvalConfig:
    model: Literal["slm", "teacher"]
    tasks_path: Path = DEFAULT_TASKS  # `slm-swap data trajectories` writes it (tasks/test.jsonl)
    label: str | None = None  # default: teacher / slm / slm-codeact (with an adapter)
    eval_root: Path = EVAL_ROOT  # results go to <eval_root>/codeact/<label>/
    teacher_mode: Literal["auto", "simulated", "hosted"] = "auto"  # auto: hosted when AZURE_ENDPOINT or
    # SLM_SWAP_TEACHER_BASE_URL is set, else the simulated teacher (offline)
    seed: int = 42  # the simulated teacher's plan; the SLM's seed
    model_path: str | None = None  # None: SLM_MODEL_PATH, else the demo SLM when fetched
    adapter_path: Path | None = None
    precision: Precision = "auto"  # engines.precision: GPU bf16 if it fits in half, else 8-bit; CPU bf16 where native
    trajectories_per_call: int = 8  # a fixed group: trajectories an actor steps (and the SLM decodes) together
    actors: int | None = None  # None: one per GPU for the SLM, else 1
    loop: LoopSettings = field(default_factory=LoopSettings)  # the teacher's capture defaults: same loop
    force: bool = False  # run every task again even when finished trajectories match the run key
    require_langfuse: bool | None = None  # None: SLM_SWAP_REQUIRE_LANGFUSE

    @property
    def model_label(self) -> str:
        if self.label:
            return self.label
        if self.model == "slm":
            return "slm-codeact" if self.adapter_path is not None else "slm"
        return "teacher"

    @property
    def output_dir(self) -> Path:
        return self.eval_root / CODEACT_TRACK / self.model_label


@dataclass(frozen=True)
class CodeactEvalOutcome:
    output_dir: Path
    metrics: CodeactEvalMetrics
    ran_now: int  # trajectories run by this call (0 when the folder was up to date)
    reused: bool


@dataclass(frozen=True)
class EnginePlan:
    spec: EngineSpec  # what each actor builds
    identity: dict[str, Any]  # the engine's part of the run key
    precision: dict[str, Any] | None  # the SLM's precision: loaded, requested, why
    teacher_mode: str | None  # simulated or hosted; None for the SLM
    actors: int
    actor_cpus: float
    actor_gpus: float


def teacher_mode_of(config: CodeactEvalConfig) -> str:
    if config.teacher_mode != "auto":
        return config.teacher_mode
    hosted = os.environ.get("AZURE_ENDPOINT", "").strip() or os.environ.get("SLM_SWAP_TEACHER_BASE_URL", "").strip()
    return "hosted" if hosted else "simulated"


def engine_plan(config: CodeactEvalConfig) -> EnginePlan:
    """Who acts, resolved on the driver (the run key holds it): bad settings fail here, before Ray starts."""
    actors = config.actors or 1
    if config.model == "teacher":
        mode = teacher_mode_of(config)
        if mode == "simulated":
            from ray_app.codeact.simulated_teacher import SimulatedTeacher

            identity = SimulatedTeacher([], seed=config.seed).describe()
        else:
            from ray_app.engines.hosted import HostedLlmEngine

            identity = HostedLlmEngine().describe()  # TeacherConfigError names the variables to set
        return EnginePlan(EngineSpec(mode, config.seed), identity, None, mode, actors, 0.5, 0)  # type: ignore[arg-type]

    from ray_app.engines.cpu_linear import resolve_cpu_linear
    from ray_app.engines.slm import SlmSettings
    from ray_app.eval.slm_plan import driver_precision_choice
    from ray_app.ray_runtime import cluster_cpus, cluster_gpus

    model_path = agent_model_path(config.model_path)
    adapter = Path(config.adapter_path).resolve() if config.adapter_path else None
    if adapter is not None and not is_adapter_folder(adapter):
        raise CodeactEvalError(f"--adapter {not_an_adapter_message(adapter)}")
    gpus = cluster_gpus()
    actors = config.actors or (gpus or 1)
    device = "cuda" if gpus else "cpu"
    settings = SlmSettings(
        model_path=model_path,
        adapter_path=adapter,
        precision=config.precision,
        batch_size=config.trajectories_per_call,  # every unfinished trajectory of a group decodes together
        max_new_tokens=config.loop.max_new_tokens,
        device=device,
        cpu_threads=None if gpus else max(1, int(cluster_cpus()) // actors),
        seed=config.seed,
    )
    # As `slm-swap eval`: decided on the driver, whose CPU a local Ray's actors share.
    choice = driver_precision_choice(settings)
    settings = replace(settings, precision=choice.precision)  # type: ignore[arg-type]
    linear = resolve_cpu_linear(settings.cpu_linear, choice.precision, device, model_path, settings.cpu_threads)
    settings = replace(settings, cpu_linear=linear.kernels)  # type: ignore[arg-type]
    identity = {
        "engine": ENGINE_IDENTITY,
        "model_fingerprint": folder_fingerprint(model_path),
        "adapter_fingerprint": adapter_fingerprint(adapter) if adapter else None,
        "device": device,
        "precision": choice.precision,
        "seed": config.seed,
        "prefill_chunk_tokens": settings.prefill_chunk_tokens,
        **linear.run_key_entry(),  # as `slm-swap eval`
    }
    precision = {"precision": choice.precision, "requested": config.precision, "reason": choice.reason}
    cpus, gpus_each = (0, 1) if gpus else (0.5, 0)  # 0.5: a whole CPU would starve Ray Data's read task on 2 cores
    return EnginePlan(EngineSpec("slm", config.seed, settings), identity, precision, None, actors, cpus, gpus_each)


def read_eval_tasks(path: Path) -> list[CodeactTask]:
    from ray_app.codeact.tasks import read_tasks

    if not path.is_file():
        raise CodeactEvalError(
            f"{path}: no tasks file; build it with `slm-swap data trajectories` (it writes tasks/test.jsonl) "
            "or pass --tasks FILE"
        )
    tasks = read_tasks(path)  # TaskFileError lists every bad line
    if not tasks:
        raise CodeactEvalError(f"{path}: no tasks in it")
    return tasks


def finished_record(config: CodeactEvalConfig, run_key: str) -> CodeactEvalMetrics | None:
    """The metrics.json of a finished run with the same key (its trajectories are reused), else None."""
    path = config.output_dir / METRICS_FILE
    if config.force or not path.is_file():
        return None
    try:
        record = CodeactEvalMetrics.read(path)
    except RecordError:
        return None  # not a record this version reads: run again, which rewrites it
    return record if record.run_key == run_key else None


def trace_trajectory(run, trajectory: Trajectory) -> None:
    """One span per trajectory: the task in, the verdict out, one event per step."""
    from ray_app.codeact.answer_check import check_answer

    task = trajectory.task
    check = check_answer(task, trajectory.final_answer, trajectory.has_final_answer, trajectory.tool_calls)
    metadata = {"trajectory_id": trajectory.trajectory_id, "model": trajectory.model, "kind": task.kind,
                "prompt_tokens": trajectory.prompt_tokens, "completion_tokens": trajectory.completion_tokens,
                "latency_s": round(trajectory.latency_s, 6)}  # fmt: skip
    with run.span(f"trajectory {task.task_id}", input={"request": task.request}, metadata=metadata) as span:
        for number, step in enumerate(trajectory.steps, start=1):
            execution = step.execution
            span.event(
                f"step {number}",
                input={"thought": step.thought, "code": step.code},
                output={"observation": execution.observation, "error": execution.error} if execution else None,
                metadata={"latency_s": step.latency_s, "duration_s": execution.duration_s if execution else None},
                level="WARNING" if step.code is None or (execution and execution.error) else "DEFAULT",
            )
        verdict = {"success": check.correct, "answer": check.code, "detail": check.detail}
        span.update(output={**verdict, "stop_reason": trajectory.stop_reason, "final_answer": trajectory.final_answer})


def engine_description(plan: EnginePlan, trajectories: list[Trajectory]) -> dict[str, Any]:
    """What the actors ran, as the engine described itself in the trajectories' metadata."""
    first = trajectories[0]
    return {"kind": first.engine, **first.metadata.get("engine", {}), "actors": plan.actors}


def run_codeact_eval(config: CodeactEvalConfig) -> CodeactEvalOutcome:
    """Evaluate `config.model` on the CodeAct test tasks; reuse finished work; return the metrics."""
    from ray_app.tracing import start_run_trace

    tasks = read_eval_tasks(config.tasks_path)  # bad tasks stop here, before any model is loaded or called
    plan = engine_plan(config)
    identity = {
        "track": CODEACT_TRACK,
        "tasks_sha256": file_sha256(config.tasks_path),
        "engine": plan.identity,
        "loop": config.loop.to_json(),
        "trajectories_per_call": config.trajectories_per_call,
    }
    run_key, label = run_key_of(identity), config.model_label
    finished = finished_record(config, run_key)
    store = TrajectoryStore.open(config.output_dir, run_key, finished)
    if finished is not None and store.has_all(tasks):
        console.print(f"eval codeact/{label}: up to date (run key {run_key[:12]} matches), skipped", highlight=False)
        return CodeactEvalOutcome(config.output_dir, finished, 0, True)
    if store.done:
        console.print(f"eval codeact/{label}: resuming, {len(store.done)}/{len(tasks)} trajectories kept")

    size = max(1, config.trajectories_per_call)
    groups = [tasks[start : start + size] for start in range(0, len(tasks), size)]
    todo = [group for group in groups if not store.has_all(group)]  # a group runs again whole
    facts = run_facts(config)
    trace_input = {"tasks": project_relative(config.tasks_path), "output_dir": project_relative(config.output_dir),
                   "identity": identity, "already_done": len(store.done), "config": facts["config"]}  # fmt: skip
    with start_run_trace(
        name=f"eval codeact/{label}",
        kind="eval",
        local_dir=config.eval_root / "traces",
        input=trace_input,
        metadata={"track": CODEACT_TRACK, "model_label": label, "run_key": run_key},
        require_langfuse=config.require_langfuse,
    ) as run:
        ran_now = 0
        if todo:
            from ray_app.ray_runtime import ensure_ray

            ensure_ray()
            with progress_bar() as progress:
                bar = StepBar(progress, f"eval codeact/{label}", len(tasks), len(store.done))
                try:
                    pool = {"actors": plan.actors, "actor_cpus": plan.actor_cpus, "actor_gpus": plan.actor_gpus}
                    for result in run_groups_on_ray(todo, plan.spec, config.loop, step_events=bar.events, **pool):
                        new = [t for t in result.trajectories if t.task.task_id not in store.done]
                        store.append(new, result.elapsed_s)
                        for trajectory in new:
                            trace_trajectory(run, trajectory)
                        ran_now += len(new)
                        bar.move(len(store.done))
                finally:
                    bar.close()
        trajectories = store.finish(tasks)
        record = CodeactEvalMetrics(
            model_label=label,
            model=trajectories[0].model,
            tasks_file=project_relative(config.tasks_path),
            metrics=codeact_metrics(trajectories),
            breakdown=codeact_breakdown(trajectories),
            wall_time_s=round(store.elapsed_s, 3),
            engine=engine_description(plan, trajectories),
            precision=plan.precision,
            teacher_mode=plan.teacher_mode,
            run_key=run_key,
            identity=identity,
            trajectories=project_relative(store.trajectories_path),
            timings=project_relative(store.timings_path),
            **facts,
        )
        metrics_path = atomic_write_json(config.output_dir / METRICS_FILE, record.to_json())
        run.end(output={"metrics": record.metrics, "ran_now": ran_now, "metrics_path": project_relative(metrics_path)})
    rates = ", ".join(
        f"{name}={value:.3f}" for name, value in record.metrics.items() if name.endswith("_rate") and value is not None
    )
    console.print(f"eval codeact/{label}: {rates} → {project_relative(metrics_path)}", highlight=False)
    return CodeactEvalOutcome(config.output_dir, record, ran_now, False)
