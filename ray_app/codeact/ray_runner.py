"""Groups of CodeAct tasks run through the loop on a Ray Data actor pool (capture and the CodeAct eval).

Each dataset item is one group of tasks, fixed by the caller; an actor holds one chat engine (built
inside the actor from an `EngineSpec`) and steps its group's trajectories together
(`loop.run_trajectories`): one batched engine call per step for every unfinished trajectory, then
their executions side by side in sandbox children. Because the groups are fixed before Ray sees
them, the trajectories that decode together (and so, with greedy decoding, their bytes) never depend
on the number of actors, on Ray's scheduling or on a resume.

`run_groups_on_ray` yields one `GroupResult` per group as its actor finishes it (completion order).
With `step_events` (a `ray.util.queue.Queue`) each actor also puts, after every batched step, the
number of trajectories that finished in it: `StepBar` moves a progress bar per step from it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ray_app.codeact.loop import LoopSettings, run_trajectories
from ray_app.codeact.records import CodeactTask, Trajectory
from ray_app.engines.slm import SlmSettings

AgentEngine = Literal["simulated", "hosted", "slm"]


@dataclass(frozen=True)
class EngineSpec:
    """What each actor builds its chat engine from (it travels to the actors pickled)."""

    kind: AgentEngine  # simulated teacher (offline), hosted teacher (AZURE_* / SLM_SWAP_TEACHER_*), local SLM
    seed: int = 42  # the simulated teacher's plan of mistakes
    slm: SlmSettings | None = None  # kind "slm": what every actor loads (model path resolved by the driver)


def agent_model_path(model_path: str | Path | None) -> Path:
    """The SLM checkpoint an agent run loads: the flag, else SLM_MODEL_PATH, else the demo SLM when it has
    been fetched (as the main job does); ModelPathError says what to set."""
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR, demo_checkpoint_complete
    from ray_app.models.model_path import resolve_slm_model_path

    if model_path is None and not os.environ.get("SLM_MODEL_PATH") and demo_checkpoint_complete(DEMO_MODEL_DIR):
        return DEMO_MODEL_DIR
    return resolve_slm_model_path(str(model_path) if model_path else None)


def build_engine(spec: EngineSpec, tasks: list[CodeactTask]):
    """The chat engine of `spec`; the simulated teacher needs the tasks it will be asked about."""
    if spec.kind == "simulated":
        from ray_app.codeact.simulated_teacher import SimulatedTeacher

        return SimulatedTeacher(tasks, seed=spec.seed)
    if spec.kind == "hosted":
        from ray_app.engines.hosted import HostedLlmEngine

        return HostedLlmEngine()
    from ray_app.engines.decode.engine import SlmEngine

    if spec.slm is None:
        raise ValueError("EngineSpec(kind='slm') needs its SlmSettings")
    return SlmEngine(spec.slm)


@dataclass(frozen=True)
class GroupResult:
    trajectories: list[Trajectory]  # in the group's task order
    elapsed_s: float  # the actor's wall time for the group (engine calls + executions; loading excluded)


class CodeactActor:
    """Ray Data actor: one chat engine; each call runs one group of tasks to their ends."""

    def __init__(self, engine: EngineSpec, loop: LoopSettings, step_events: Any = None):
        self.spec, self.loop, self.step_events = engine, loop, step_events
        self.engine = None

    def on_step(self, finished: int) -> None:
        if self.step_events is not None:
            self.step_events.put_nowait(finished)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        outputs = []
        for payload in batch["payload"]:
            tasks = [CodeactTask.from_json(task) for task in json.loads(payload)]
            if self.engine is None or self.spec.kind == "simulated":  # the simulated teacher knows its group only
                self.engine = build_engine(self.spec, tasks)
            started = time.perf_counter()
            trajectories = run_trajectories(tasks, self.engine, self.loop, on_step=self.on_step)
            elapsed_s = time.perf_counter() - started
            outputs.append(json.dumps({"trajectories": [t.to_json() for t in trajectories], "elapsed_s": elapsed_s}))
        return {"result": outputs}


def run_groups_on_ray(
    groups: list[list[CodeactTask]],
    engine: EngineSpec,
    loop: LoopSettings,
    *,
    actors: int = 1,
    actor_cpus: float = 0.5,
    actor_gpus: float = 0,
    step_events: Any = None,
) -> Iterator[GroupResult]:
    """Yield each group's trajectories as its actor finishes it (completion order); nothing for no groups."""
    if not groups:
        return
    import ray

    from ray_app.ray_runtime import ensure_ray, map_batches_without_restarts

    ensure_ray()
    items = [{"payload": json.dumps([task.to_json() for task in group])} for group in groups]
    dataset = map_batches_without_restarts(
        ray.data.from_items(items, override_num_blocks=len(items)),
        CodeactActor,
        fn_constructor_kwargs={"engine": engine, "loop": loop, "step_events": step_events},
        batch_size=1,  # one item = one group
        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
        num_cpus=actor_cpus,
        num_gpus=actor_gpus,
    )
    for row in dataset.iter_rows():
        result = json.loads(row["result"])
        yield GroupResult([Trajectory.from_json(value) for value in result["trajectories"]], result["elapsed_s"])


class StepBar:
    """A rich bar of trajectories done, moved after every batched step of any actor: hand `bar.events`
    to `run_groups_on_ray(step_events=...)` (the actors put there how many trajectories finished in each
    step; a driver thread moves the bar), call `bar.move(done)` as groups come back, then `bar.close()`.
    Needs Ray started (`ensure_ray`)."""

    def __init__(self, progress, description: str, total: int, done: int) -> None:
        from ray.util.queue import Queue

        self.events = Queue(actor_options={"num_cpus": 0})
        self.progress, self.description, self.total = progress, description, total
        self.task = progress.add_task(description, total=total, completed=done)
        self.completed, self.steps, self.lock = done, 0, threading.Lock()
        self.stopped = threading.Event()
        self.follower = threading.Thread(target=self.follow, name="codeact-steps", daemon=True)
        self.follower.start()

    def follow(self) -> None:
        from ray.util.queue import Empty

        while not self.stopped.is_set():
            try:
                finished = self.events.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue is gone (Ray shutting down): the bar just stops
                return
            self.steps += 1
            self.move(min(self.total, self.completed + finished))

    def move(self, completed: int) -> None:
        with self.lock:
            self.completed = max(self.completed, completed)
            description = f"{self.description} (step {self.steps})"
            self.progress.update(self.task, completed=self.completed, description=description)

    def close(self) -> None:
        self.stopped.set()
        self.follower.join(timeout=2)
        self.events.shutdown(force=True)
