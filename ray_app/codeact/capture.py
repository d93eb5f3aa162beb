"""`slm-swap capture`: the teacher runs the CodeAct loop over the tasks on Ray; one trace per trajectory.

Reads the tasks (a tasks file, or built from the committed splits: `tasks.build_tasks`), drops the
ones whose trajectory is already in the output (a resumed capture redoes nothing), and hands the rest
to a pool of Ray Data actors in groups of `trajectories_per_call`: each actor holds one chat engine
(the simulated teacher, the hosted teacher, or the local SLM with or without an adapter) and steps
its group's trajectories together (`ray_runner.run_groups_on_ray`). Each finished group is appended to
`<out_dir>/traces.jsonl` at once, one trace per line in the shape `slm-swap data traces` and
`slm-swap data trajectories` read; with Langfuse keys set, the same traces go to Langfuse too. The
run itself is one parent trace; `capture.json` beside the traces says what ran, with what, and how
each trajectory ended.

Writes: `<out_dir>/traces.jsonl` (appended per group; a line cut by a kill is dropped on resume),
`<out_dir>/tasks.jsonl` (the tasks of this capture), `<out_dir>/capture.json`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ray_app.atomic_files import atomic_write_json
from ray_app.codeact.loop import LoopSettings
from ray_app.codeact.ray_runner import EngineSpec, agent_model_path, run_groups_on_ray
from ray_app.codeact.records import CodeactTask, trajectory_id
from ray_app.engines.slm import SlmSettings
from ray_app.paths import PROJECT_ROOT

TeacherKind = Literal["simulated", "hosted", "slm"]
DATASET_DIR = PROJECT_ROOT / "slm_swap" / "02_dataset"
TRAJECTORIES_DIR = PROJECT_ROOT / "slm_swap" / "01_source" / "trajectories"


class CaptureInputError(ValueError):
    """The capture cannot start: bad tasks, a bad traces file to resume from, or a bad setting."""


@dataclass(frozen=True)
class CaptureConfig:
    teacher: TeacherKind = "simulated"
    out_dir: Path | None = None  # None: slm_swap/01_source/trajectories/<teacher model>
    tasks_path: Path | None = None  # a tasks JSONL (`tasks.write_tasks`); None: built from dataset_dir
    dataset_dir: Path = DATASET_DIR
    splits: tuple[str, ...] = ("train", "val", "test")
    multistep_tasks: int = 24  # generated multi-step tasks added to the committed rows' tasks
    max_tasks: int | None = None  # N tasks only (a quick look): the kinds taken in turn
    concurrency: int = 1  # Ray actors, each with its own engine
    trajectories_per_call: int = 8  # trajectories an actor steps together
    seed: int = 42  # the simulated teacher's plan
    loop: LoopSettings = field(default_factory=LoopSettings)
    # The local SLM as the agent (teacher "slm"): the demo SLM unless a path is given.
    model_path: Path | None = None
    adapter_path: Path | None = None
    precision: str = "auto"

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["loop"] = self.loop.to_json()
        for key in ("out_dir", "tasks_path", "dataset_dir", "model_path", "adapter_path"):
            values[key] = str(values[key]) if values[key] is not None else None
        values["splits"] = list(self.splits)
        return values


def capture_tasks(config: CaptureConfig) -> tuple[list[CodeactTask], Counter]:
    """The tasks to capture, and those left out by reason (a gold call its own schema refuses)."""
    from ray_app.codeact.tasks import build_tasks, gold_call_problem, kinds_in_turn, read_tasks

    if config.tasks_path is not None:
        tasks = read_tasks(config.tasks_path)
    else:
        tasks = []
        for split in config.splits:
            tasks.extend(build_tasks(config.dataset_dir, split, 0))
        tasks.extend(build_tasks(config.dataset_dir, None, config.multistep_tasks))
    tasks = list({task.task_id: task for task in tasks}.values())  # a task asked twice is captured once
    skipped: Counter = Counter()
    solvable = []
    for task in tasks:
        if gold_call_problem(task) is None:
            solvable.append(task)
        else:
            skipped["the gold call breaks its own tool schema"] += 1
    tasks = solvable
    for task in tasks:  # the sandbox would refuse these inside an actor: say so before anything starts
        names = [tool.python_name for tool in task.tools]
        if len(set(names)) != len(names) or "final_answer" in names:
            raise CaptureInputError(f"{task.source or task.task_id}: two tools share a Python name: {names}")
    if config.max_tasks is None:
        return tasks, skipped
    return kinds_in_turn(tasks)[: config.max_tasks], skipped


def engine_spec(config: CaptureConfig) -> EngineSpec:
    """The chat engine each actor builds (`ray_runner.build_engine`)."""
    slm = None
    if config.teacher == "slm":
        slm = SlmSettings(
            model_path=Path(config.model_path),  # resolved by the driver (`capture_model_path`)
            adapter_path=config.adapter_path,
            precision=config.precision,  # type: ignore[arg-type]
            batch_size=config.trajectories_per_call,
            max_new_tokens=config.loop.max_new_tokens,
        )
    return EngineSpec(config.teacher, config.seed, slm)


def actor_cpus(config: CaptureConfig) -> float:
    """An SLM actor takes its share of the cores; a teacher actor mostly waits (simulated or over HTTP)."""
    return max(1, (os.cpu_count() or 1) // max(1, config.concurrency)) if config.teacher == "slm" else 0.5


def teacher_model_name(config: CaptureConfig) -> str:
    """Who acts, as trajectories name it (known before any engine is built, so resuming needs none)."""
    if config.teacher == "simulated":
        from ray_app.codeact.simulated_teacher import SIMULATED_TEACHER_MODEL

        return SIMULATED_TEACHER_MODEL
    if config.teacher == "hosted":
        from ray_app.engines.teacher_settings import teacher_settings_from_env

        return teacher_settings_from_env().model
    from ray_app.engines.decode.loaded_slm import BASE_MODEL_NAME, adapter_model_name

    return adapter_model_name(config.adapter_path) if config.adapter_path else BASE_MODEL_NAME


def capture_model_path(config: CaptureConfig) -> Path:
    """The SLM checkpoint for `--teacher slm` (`ray_runner.agent_model_path`)."""
    return agent_model_path(config.model_path)


@dataclass(frozen=True)
class CaptureOutcome:
    out_dir: Path
    traces_path: Path
    model: str
    tasks: int
    captured_now: int
    already_captured: int
    stop_reasons: dict[str, int]
    tasks_skipped: dict[str, int]  # tasks left out, by reason
    trace_location: str  # the capture run's own trace (Langfuse URL or local file)


def captured_trajectory_ids(traces_path: Path) -> set[str]:
    """Trajectory ids already in the traces file. A last line cut by a kill is removed (its group is
    captured again); a broken line anywhere else stops the capture, naming it."""
    if not traces_path.is_file():
        return set()
    lines = traces_path.read_bytes().split(b"\n")
    ids, kept = set(), 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            trace = json.loads(line)
            ids.add(trace["metadata"]["trajectory_id"])
        except (ValueError, KeyError, TypeError) as error:
            if number >= len(lines) - 1:  # the last line, written when the run was killed
                with traces_path.open("r+b") as handle:
                    handle.truncate(kept)
                return ids
            raise CaptureInputError(f"{traces_path}:{number}: not a trajectory trace ({error})") from None
        kept += len(line) + 1
    return ids


def run_capture(config: CaptureConfig) -> CaptureOutcome:
    """Capture the missing trajectories of the config's tasks (see the module docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ray_app.codeact.tasks import write_tasks
    from ray_app.codeact.trajectory_writers import LocalTrajectoryTraceFile, langfuse_writer_from_env
    from ray_app.tracing import start_run_trace
    from ray_app.tracing.run_trace import safe_file_name

    tasks, tasks_skipped = capture_tasks(config)  # bad tasks stop here, before any model is loaded or called
    if config.teacher == "slm":
        config = replace(config, model_path=capture_model_path(config))
    if not tasks:
        raise CaptureInputError("no tasks to capture")
    model = teacher_model_name(config)
    out_dir = config.out_dir or TRAJECTORIES_DIR / safe_file_name(model)
    traces_path = out_dir / "traces.jsonl"
    done = captured_trajectory_ids(traces_path)
    todo = [task for task in tasks if trajectory_id(task.task_id, model) not in done]
    write_tasks(out_dir / "tasks.jsonl", tasks)
    size = max(1, config.trajectories_per_call)
    groups = [todo[start : start + size] for start in range(0, len(todo), size)]
    local_file, langfuse = LocalTrajectoryTraceFile(traces_path), langfuse_writer_from_env()
    stop_reasons: Counter = Counter()
    with start_run_trace(
        name=f"capture {model}",
        kind="capture",
        local_dir=out_dir / "run_traces",
        input=config.to_json(),
        metadata={"model": model, "tasks": len(tasks), "already_captured": len(tasks) - len(todo)},
    ) as run:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with progress:
            bar = progress.add_task(f"capture {model}", total=len(tasks), completed=len(tasks) - len(todo))
            spec, cpus = engine_spec(config), actor_cpus(config)
            for result in run_groups_on_ray(groups, spec, config.loop, actors=config.concurrency, actor_cpus=cpus):
                trajectories = result.trajectories
                local_file.write(trajectories)  # kept at once: a kill loses at most the groups in flight
                if langfuse is not None:
                    langfuse.write(trajectories)
                stop_reasons.update(trajectory.stop_reason for trajectory in trajectories)
                progress.update(bar, advance=len(trajectories))
        if langfuse is not None:
            langfuse.flush()
        outcome = CaptureOutcome(
            out_dir=out_dir,
            traces_path=traces_path,
            model=model,
            tasks=len(tasks),
            captured_now=sum(stop_reasons.values()),
            already_captured=len(tasks) - len(todo),
            stop_reasons=dict(sorted(stop_reasons.items())),
            tasks_skipped=dict(tasks_skipped),
            trace_location=run.location,
        )
        summary = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(outcome).items()}
        atomic_write_json(out_dir / "capture.json", {"config": config.to_json(), **summary})
        run.end(output=summary)
    return outcome
