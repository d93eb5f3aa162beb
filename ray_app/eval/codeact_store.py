"""Trajectories of one CodeAct eval run on disk: appended group by group, resumable, finished atomically.

While a run works, each finished group's trajectories are appended to `trajectories.partial.jsonl`
(one write and fsync per group, wall-clock fields included) and `run_state.json` records the run key
and the time the actors spent. A restarted run with the same key keeps every complete line (a torn
last line from a kill is cut off); a finished run with the same key (its metrics.json says so) gives
back every line still in `trajectories.jsonl`, with its timings from `timings.jsonl`. When every task
has its trajectory, `trajectories.jsonl` is written in task order with the wall-clock fields at 0 (so
the same run gives the same bytes) and `timings.jsonl` beside it; the partial files are removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json, atomic_write_jsonl, complete_jsonl_lines
from ray_app.codeact.records import CodeactTask, Trajectory

PARTIAL_NAME = "trajectories.partial.jsonl"
STATE_NAME = "run_state.json"
TRAJECTORIES_NAME = "trajectories.jsonl"
TIMINGS_NAME = "timings.jsonl"


def without_timings(trajectory: Trajectory) -> Trajectory:
    """The trajectory with every wall-clock field at 0 (what trajectories.jsonl holds)."""
    steps = tuple(
        replace(step, latency_s=0.0, execution=replace(step.execution, duration_s=0.0) if step.execution else None)
        for step in trajectory.steps
    )
    return replace(trajectory, steps=steps)


def timing_record(trajectory: Trajectory) -> dict[str, Any]:
    """One line of timings.jsonl: the wall-clock fields `without_timings` takes out, per step."""
    return {
        "task_id": trajectory.task.task_id,
        "trajectory_id": trajectory.trajectory_id,
        "latency_s": [step.latency_s for step in trajectory.steps],
        "duration_s": [step.execution.duration_s if step.execution else None for step in trajectory.steps],
    }


def with_timings(trajectory: Trajectory, timing: dict[str, Any] | None) -> Trajectory:
    """The trajectory with the wall-clock fields of its timings line put back (0 when it has none)."""
    if timing is None or len(timing["latency_s"]) != len(trajectory.steps):
        return trajectory
    steps = tuple(
        replace(
            step,
            latency_s=latency,
            execution=replace(step.execution, duration_s=duration or 0.0) if step.execution else None,
        )
        for step, latency, duration in zip(trajectory.steps, timing["latency_s"], timing["duration_s"], strict=True)
    )
    return replace(trajectory, steps=steps)


@dataclass
class TrajectoryStore:
    folder: Path
    run_key: str
    done: dict[str, Trajectory] = field(default_factory=dict)  # task id -> trajectory, timings included
    elapsed_s: float = 0.0  # the actors' time on the groups stored

    @property
    def partial_path(self) -> Path:
        return self.folder / PARTIAL_NAME

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_NAME

    @property
    def trajectories_path(self) -> Path:
        return self.folder / TRAJECTORIES_NAME

    @property
    def timings_path(self) -> Path:
        return self.folder / TIMINGS_NAME

    @classmethod
    def open(cls, folder: Path, run_key: str, finished: Any = None) -> TrajectoryStore:
        """What earlier runs with the same key kept: a finished run's lines (when `finished`, its
        metrics record, carries the key) and an unfinished run's partial file; a partial run of
        another key is discarded."""
        store = cls(folder=folder, run_key=run_key)
        folder.mkdir(parents=True, exist_ok=True)
        if finished is not None:
            timings = {line["trajectory_id"]: line for line in complete_jsonl_lines(store.timings_path, False)}
            for value in complete_jsonl_lines(store.trajectories_path, False):
                trajectory = Trajectory.from_json(value)
                store.done[trajectory.task.task_id] = with_timings(trajectory, timings.get(trajectory.trajectory_id))
            store.elapsed_s = finished.wall_time_s if store.done else 0.0
        state = json.loads(store.state_path.read_text(encoding="utf-8")) if store.state_path.is_file() else {}
        if state.get("run_key") == run_key and store.partial_path.is_file():
            store.elapsed_s += float(state.get("elapsed_s", 0.0))
            for value in complete_jsonl_lines(store.partial_path, True):
                trajectory = Trajectory.from_json(value)
                store.done[trajectory.task.task_id] = trajectory
        else:  # another run's unfinished work, or none
            store.partial_path.unlink(missing_ok=True)
            store.state_path.unlink(missing_ok=True)
        return store

    def has_all(self, tasks: Iterable[CodeactTask]) -> bool:
        return all(task.task_id in self.done for task in tasks)

    def append(self, trajectories: list[Trajectory], elapsed_s: float) -> None:
        """Append one finished group in a single write, then record the time spent."""
        text = "".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in trajectories)
        with self.partial_path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for trajectory in trajectories:
            self.done[trajectory.task.task_id] = trajectory
        self.elapsed_s += elapsed_s
        atomic_write_json(self.state_path, {"run_key": self.run_key, "elapsed_s": self.elapsed_s})

    def finish(self, tasks: list[CodeactTask]) -> list[Trajectory]:
        """Write trajectories.jsonl and timings.jsonl in task order (atomically); drop the partial files.
        Returns the trajectories with their timings."""
        missing = [task.task_id for task in tasks if task.task_id not in self.done]
        if missing:
            raise RuntimeError(f"{len(missing)} tasks have no trajectory yet (first: {missing[:5]})")
        ordered = [self.done[task.task_id] for task in tasks]
        atomic_write_jsonl(self.timings_path, (timing_record(t) for t in ordered))
        atomic_write_jsonl(self.trajectories_path, (without_timings(t).to_json() for t in ordered))
        self.partial_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return ordered
