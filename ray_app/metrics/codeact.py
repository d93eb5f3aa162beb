"""CodeAct metrics (pure): what each trajectory did, the rates of one model over its tasks, and the
record of its metrics.json.

Per trajectory (`trajectory_facts`): success (`codeact.answer_check.check_answer`, part 1's
correctness check), steps (model turns), valid actions (turns with a parseable code block: `<code>`
or a fenced Python block, `loop.parse_action`), executions (turns whose code ran), tool errors
(executions that raised: a tool stub refusing a call, a Python error, a sandbox refusal or kill),
tokens summed over its model calls, and its latency (its model calls' latency plus its executions'
durations, wall clock).

Over a model's trajectories (`codeact_metrics`), one trajectory per task; every denominator stated:
- `success_rate` = successful trajectories / tasks;
- `valid_action_rate` = steps with a parseable code block / all steps (of every trajectory);
- `tool_error_rate` = executions that raised / executions (None when no code ran at all);
- `recovery_rate` = successful trajectories with at least one raised execution / trajectories with at
  least one raised execution (None when none raised). A turn without code is not an error here: the
  valid action rate counts it;
- `mean_steps` = steps / tasks; `mean_prompt_tokens`, `mean_completion_tokens` = tokens / tasks;
- `mean_latency_s`, `latency_p50_s`, `latency_p95_s`: over tasks, of each task's latency.
The counts behind each rate sit beside it (`successes`, `steps`, `valid_actions`, ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ray_app.codeact.answer_check import check_answer
from ray_app.codeact.records import TASK_KINDS, Trajectory
from ray_app.metrics.rates import rate
from ray_app.record_fields import RecordFields, read_json_file

CODEACT_TRACK = "codeact"
RATES = ("success_rate", "valid_action_rate", "tool_error_rate", "recovery_rate")


@dataclass(frozen=True)
class TrajectoryFacts:
    task_id: str
    kind: str
    answer: str  # AnswerCheck code: correct, no_final_answer, wrong_call, wrong_final_answer
    success: bool
    stop_reason: str
    steps: int
    valid_actions: int  # steps with a parseable code block
    executions: int  # steps whose code ran
    tool_errors: int  # executions that raised
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # model calls + executions, wall clock

    @property
    def recovered(self) -> bool:
        """Succeeded after at least one execution raised."""
        return self.success and self.tool_errors > 0


def trajectory_facts(trajectory: Trajectory) -> TrajectoryFacts:
    task, steps = trajectory.task, trajectory.steps
    executions = [step.execution for step in steps if step.execution is not None]
    check = check_answer(task, trajectory.final_answer, trajectory.has_final_answer, trajectory.tool_calls)
    return TrajectoryFacts(
        task_id=task.task_id,
        kind=task.kind,
        answer=check.code,
        success=check.correct,
        stop_reason=trajectory.stop_reason,
        steps=len(steps),
        valid_actions=sum(step.code is not None for step in steps),
        executions=len(executions),
        tool_errors=sum(execution.error is not None for execution in executions),
        prompt_tokens=trajectory.prompt_tokens,
        completion_tokens=trajectory.completion_tokens,
        latency_s=trajectory.latency_s,
    )


def r6(value: float) -> float:
    return round(float(value), 6)


def codeact_metrics(trajectories: Iterable[Trajectory]) -> dict[str, float | int | None]:
    """The rates, means and counts of the module docstring (rates and means rounded to 6 decimals)."""
    facts = [trajectory_facts(trajectory) for trajectory in trajectories]
    tasks = len(facts)
    total = {
        key: sum(getattr(fact, key) for fact in facts)
        for key in ("steps", "valid_actions", "executions", "tool_errors", "prompt_tokens", "completion_tokens")
    }
    successes = sum(fact.success for fact in facts)
    errored = sum(fact.tool_errors > 0 for fact in facts)
    recovered = sum(fact.recovered for fact in facts)
    latencies = np.asarray([fact.latency_s for fact in facts], dtype=float)
    return {
        "tasks": tasks,
        "success_rate": r6(rate(successes, tasks)),
        "valid_action_rate": r6(rate(total["valid_actions"], total["steps"])),
        "tool_error_rate": r6(rate(total["tool_errors"], total["executions"])) if total["executions"] else None,
        "recovery_rate": r6(rate(recovered, errored)) if errored else None,
        "mean_steps": r6(rate(total["steps"], tasks)),
        "mean_prompt_tokens": r6(rate(total["prompt_tokens"], tasks)),
        "mean_completion_tokens": r6(rate(total["completion_tokens"], tasks)),
        "mean_latency_s": r6(latencies.mean()) if tasks else None,
        "latency_p50_s": r6(np.percentile(latencies, 50)) if tasks else None,
        "latency_p95_s": r6(np.percentile(latencies, 95)) if tasks else None,
        "successes": successes,
        "errored_trajectories": errored,
        "recovered": recovered,
        **total,
    }


def codeact_breakdown(trajectories: Iterable[Trajectory]) -> dict[str, dict[str, Any]]:
    """How the trajectories ended: answer codes, stop reasons, and the success rate per task kind."""
    facts = [trajectory_facts(trajectory) for trajectory in trajectories]
    by_kind = {kind: [fact.success for fact in facts if fact.kind == kind] for kind in TASK_KINDS}
    return {
        "answer_codes": dict(sorted(Counter(fact.answer for fact in facts).items())),
        "stop_reasons": dict(sorted(Counter(fact.stop_reason for fact in facts).items())),
        "success_rate_by_kind": {
            kind: {"tasks": len(hits), "success_rate": r6(rate(sum(hits), len(hits)))}
            for kind, hits in by_kind.items()
            if hits
        },
    }


@dataclass(frozen=True)
class CodeactEvalMetrics:
    """`<eval_root>/codeact/<label>/metrics.json`, field for field in the file's order."""

    model_label: str  # the results folder: teacher, slm, slm-codeact
    model: str  # who acted, as the trajectories name it
    tasks_file: str  # the test tasks read (project-relative when inside the project)
    metrics: dict[str, Any]  # `codeact_metrics`: numbers, or null for a rate without a denominator
    breakdown: dict[str, Any]  # `codeact_breakdown`
    wall_time_s: float  # summed over groups: the actors' time stepping them (model loading excluded)
    engine: dict[str, Any]  # the engine's own description (kind, model, precision...), as it wrote it
    precision: dict[str, Any] | None  # the SLM: loaded, requested, why; None for a teacher
    teacher_mode: str | None  # simulated or hosted; None for an SLM
    run_key: str  # sha256 of `identity`: a folder with the same key is reused, its trajectories kept
    identity: dict[str, Any]  # everything the trajectories depend on
    trajectories: str  # trajectories.jsonl beside it
    timings: str  # timings.jsonl beside it: the wall-clock fields trajectories.jsonl leaves at 0
    config: dict[str, Any]
    git: dict[str, Any]
    packages: dict[str, str | None]
    created_at: str

    @property
    def success_rate(self) -> float:
        return self.metrics["success_rate"]

    @classmethod
    def from_json(cls, value: Any, path: Path | str) -> CodeactEvalMetrics:
        """The record of decoded metrics.json `value`; RecordError names `path` and the first bad field."""
        fields = RecordFields(value, path)
        if fields.text("track") != CODEACT_TRACK:
            raise fields.error("track", repr(CODEACT_TRACK))
        label, model, tasks_file = fields.text("model_label"), fields.text("model"), fields.text("tasks_file")
        metrics = fields.object("metrics")
        for name in ("tasks", "success_rate", "valid_action_rate", "mean_steps"):
            metrics.number(name)  # RecordError when one the decide step reads is missing
        breakdown, wall_time_s = fields.mapping("breakdown"), fields.number("wall_time_s")
        fields.object("engine").text("kind")
        precision = None if fields.raw("precision") is None else fields.mapping("precision")
        return cls(
            model_label=label,
            model=model,
            tasks_file=tasks_file,
            metrics={name: metrics.number(name, null=True) for name in metrics.value},
            breakdown=breakdown,
            wall_time_s=wall_time_s,
            engine=fields.mapping("engine"),
            precision=precision,
            teacher_mode=fields.text("teacher_mode", null=True),
            run_key=fields.text("run_key"),
            identity=fields.mapping("identity"),
            trajectories=fields.text("trajectories"),
            timings=fields.text("timings"),
            config=fields.mapping("config"),
            git=fields.mapping("git"),
            packages=fields.mapping("packages"),
            created_at=fields.text("created_at"),
        )

    @classmethod
    def read(cls, path: Path) -> CodeactEvalMetrics:
        """metrics.json at `path`; RecordError names the file and the line (bad JSON) or the field."""
        return cls.from_json(read_json_file(path), path)

    def to_json(self) -> dict[str, Any]:
        return {
            "track": CODEACT_TRACK,
            "model_label": self.model_label,
            "model": self.model,
            "tasks_file": self.tasks_file,
            "metrics": self.metrics,
            "breakdown": self.breakdown,
            "wall_time_s": self.wall_time_s,
            "engine": self.engine,
            "precision": self.precision,
            "teacher_mode": self.teacher_mode,
            "run_key": self.run_key,
            "identity": self.identity,
            "trajectories": self.trajectories,
            "timings": self.timings,
            "config": self.config,
            "git": self.git,
            "packages": self.packages,
            "created_at": self.created_at,
        }
