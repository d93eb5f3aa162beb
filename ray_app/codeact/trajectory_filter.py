"""The automatic filter: one verdict and one reason code per trajectory, counted in a filter report.

Reason codes, in the order they are tried (the first that applies is the verdict):

1. `sandbox_violation`: an execution was refused or killed by the sandbox (a forbidden import or
   access, a time, memory or output limit, a crash). Never trained on, even when the answer came out right.
2. `over_token_budget`: prompt + completion tokens over every model call exceed the budget, or the loop
   stopped on its own token budget.
3. `no_code`: no turn had a code block, or the run ended on its no-code stop.
4. `all_executions_errored`: code ran, and every execution raised.
5. `max_steps`: the run used its steps without a final answer.
6. `wrong_call` / `wrong_final_answer`: `answer_check.check_answer` says the answer is wrong
   (`wrong_call` for a toolcall task whose last accepted call is not the gold one; everything else,
   a missing final answer included, is `wrong_final_answer`).
7. `replay_mismatch` (only with `replay=True`): running the recorded code again in a fresh sandbox
   did not give the recorded observations.
8. `passed`: accepted. `recovered` is true when an execution errored or a turn had no code before the
   run got it right: such trajectories are kept, they teach recovery.

Safety and cost come before correctness: a right answer reached through a violation or past the budget
is still rejected, and the most specific cause of a failure is named (every execution errored, rather
than the max-steps stop it led to).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ray_app.codeact.answer_check import check_answer
from ray_app.codeact.loop import LoopSettings
from ray_app.codeact.records import TASK_KINDS, Trajectory

REASONS = (
    "passed",
    "wrong_final_answer",
    "wrong_call",
    "no_code",
    "max_steps",
    "sandbox_violation",
    "all_executions_errored",
    "over_token_budget",
    "replay_mismatch",
)


@dataclass(frozen=True)
class FilterSettings:
    # prompt + completion tokens summed over a trajectory's model calls: the loop's own budget
    token_budget: int = LoopSettings().token_budget
    replay: bool = False  # run every trajectory that would pass again in a fresh sandbox


@dataclass(frozen=True)
class FilterVerdict:
    accepted: bool
    reason: str  # one of REASONS
    detail: str = ""
    recovered: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason, "detail": self.detail, "recovered": self.recovered}


def _rejected(reason: str, detail: str) -> FilterVerdict:
    return FilterVerdict(accepted=False, reason=reason, detail=detail)


def filter_verdict(trajectory: Trajectory, settings: FilterSettings = FilterSettings()) -> FilterVerdict:
    """The verdict on one trajectory (reasons in the order of the module docstring)."""
    steps = trajectory.steps
    executions = [step.execution for step in steps if step.execution is not None]
    for number, step in enumerate(steps, start=1):
        if step.execution is not None and step.execution.violation:
            return _rejected("sandbox_violation", f"step {number}: {step.execution.violation}")
    tokens = trajectory.prompt_tokens + trajectory.completion_tokens
    if tokens > settings.token_budget or trajectory.stop_reason == "token_budget":
        return _rejected("over_token_budget", f"{tokens} tokens, budget {settings.token_budget}")
    if trajectory.stop_reason == "no_code" or all(step.code is None for step in steps):
        return _rejected("no_code", f"{len(steps)} turn(s), none with code")
    if executions and all(execution.error for execution in executions):
        return _rejected("all_executions_errored", f"{len(executions)} execution(s), last: {executions[-1].error}")
    if trajectory.stop_reason == "max_steps" and not trajectory.has_final_answer:
        return _rejected("max_steps", f"{len(steps)} steps without a final answer")
    check = check_answer(trajectory.task, trajectory.final_answer, trajectory.has_final_answer, trajectory.tool_calls)
    if not check.correct:
        reason = "wrong_call" if check.code == "wrong_call" else "wrong_final_answer"
        return _rejected(reason, f"{check.code}: {check.detail}" if check.code != reason else check.detail)
    if settings.replay:
        mismatch = replay_mismatch(trajectory)
        if mismatch:
            return _rejected("replay_mismatch", mismatch)
    recovered = any(step.code is None or (step.execution is not None and step.execution.error) for step in steps)
    return FilterVerdict(accepted=True, reason="passed", recovered=recovered)


def replay_mismatch(trajectory: Trajectory, limits: Any = None) -> str | None:
    """Run every step's code again, in order, in one fresh sandbox session with the task's tools;
    None when each execution prints the recorded observation, else which step differs."""
    from ray_app.codeact.sandbox import SandboxLimits, SandboxSession

    with SandboxSession(trajectory.task.tools, limits or SandboxLimits()) as session:
        for number, step in enumerate(trajectory.steps, start=1):
            if step.code is None or step.execution is None:
                continue
            observed, recorded = session.run(step.code).observation, step.execution.observation
            if observed != recorded:
                return f"step {number}: replay observed {observed[:80]!r}, recorded {recorded[:80]!r}"
    return None


def replay_check(trajectory: Trajectory, limits: Any = None) -> bool:
    """True when running the recorded code again gives the same observations."""
    return replay_mismatch(trajectory, limits) is None


@dataclass
class FilterReport:
    verdicts: dict[str, FilterVerdict] = field(default_factory=dict)  # trajectory id -> verdict, input order
    counts: Counter = field(default_factory=Counter)  # reason -> trajectories
    per_kind: dict[str, Counter] = field(default_factory=dict)  # task kind -> reason -> trajectories
    recovered: int = 0  # accepted trajectories that recovered from an error
    settings: FilterSettings = field(default_factory=FilterSettings)

    @property
    def accepted_ids(self) -> list[str]:
        return [trajectory_id for trajectory_id, verdict in self.verdicts.items() if verdict.accepted]

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "trajectories": len(self.verdicts),
            "accepted": len(self.accepted_ids),
            "recovered": self.recovered,
            "counts": {reason: self.counts[reason] for reason in REASONS},
            "per_kind": {kind: dict(sorted(counts.items())) for kind, counts in sorted(self.per_kind.items())},
            "verdicts": {
                trajectory_id: self.verdicts[trajectory_id].to_json() for trajectory_id in sorted(self.verdicts)
            },
        }


def filter_trajectories(
    trajectories: Iterable[Trajectory], settings: FilterSettings = FilterSettings()
) -> FilterReport:
    """Every trajectory's verdict, with counts per reason and per task kind."""
    report = FilterReport(per_kind={kind: Counter() for kind in TASK_KINDS}, settings=settings)
    for trajectory in trajectories:
        if trajectory.trajectory_id in report.verdicts:
            raise ValueError(f"trajectory {trajectory.trajectory_id} appears twice")
        verdict = filter_verdict(trajectory, settings)
        report.verdicts[trajectory.trajectory_id] = verdict
        report.counts[verdict.reason] += 1
        report.per_kind.setdefault(trajectory.task.kind, Counter())[verdict.reason] += 1
        report.recovered += verdict.recovered
    return report
