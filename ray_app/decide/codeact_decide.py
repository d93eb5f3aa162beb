"""`slm-swap decide --track codeact`: teacher vs each student on the same CodeAct test tasks.

Reads `<eval_root>/codeact/<label>/{trajectories.jsonl,metrics.json}` as `run_codeact_eval` writes them:
1. checks that every label ran the same tasks in the same order (task ids), and re-checks every
   trajectory's answer (`metrics.codeact.trajectory_facts`) against the success rate metrics.json states;
2. teacher vs base SLM on success rate: delta = teacher - slm, the paired bootstrap 95% interval, the
   exact McNemar p and a verdict, exactly as the seed's tracks get them (`decide.compare_core`); the
   other rates and means (valid action, tool error, recovery, steps, tokens, latency) beside it as info;
3. the seed's rule unchanged (`decide_fine_tune`) on success rate: fine_tune = 1 when the base SLM's
   success rate is below the teacher's (delta > 0), else 0. The interval never changes it;
4. beside it, each student's parity verdict against the teacher on success rate (`non_inferiority.py`,
   the same functions as the seed's tracks): not worse by more than the margin, worse, or cannot tell;
5. every other label (the adapted student, `slm-codeact`) against the teacher and against the base SLM.
Writes `<eval_root>/codeact/decision.json` (the `CodeactDecision` record; `fine_tune` at the top, which
the training gate reads) and logs one trace with the decision as an event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json
from ray_app.codeact.records import Trajectory
from ray_app.decide.decide import CONFIDENCE, compare_core, decide_fine_tune, r6
from ray_app.decide.decide_config import DecideError
from ray_app.decide.decision_record import AdaptedComparison, FileRead, ModelComparison, RateGap
from ray_app.decide.non_inferiority import DEFAULT_MARGIN, Parity, check_margin, parity_metadata
from ray_app.metrics.codeact import CODEACT_TRACK, CodeactEvalMetrics, trajectory_facts
from ray_app.paths import EVAL_ROOT, project_relative
from ray_app.record_fields import RecordError, RecordFields, read_json_file
from ray_app.settings import PositiveFloat

DECISION_FILE = "decision.json"
METRIC = "success_rate"  # the one metric the rule reads
INFO_METRICS = ("valid_action_rate", "tool_error_rate", "recovery_rate", "mean_steps", "mean_prompt_tokens",
                "mean_completion_tokens", "mean_latency_s")  # fmt: skip
RULE = (
    "fine_tune = 1 when the base SLM's CodeAct success rate is below the teacher's (delta = teacher - slm > 0), "
    "else 0; the 95% interval and McNemar p-value are reported beside it and never change it"
)


@dataclass(frozen=True)
class CodeactDecideConfig:
    eval_root: Path = EVAL_ROOT  # holds codeact/<label>/; decision.json goes to codeact/
    teacher_label: str = "teacher"
    slm_label: str = "slm"  # the base SLM; every other label under codeact/ is an adapted SLM
    bootstrap_resamples: int = 10_000
    seed: int = 42
    parity_margin: PositiveFloat = (
        DEFAULT_MARGIN  # a student worse than the teacher by more than this? (0.02: 2 points)
    )
    require_langfuse: bool | None = None  # None: SLM_SWAP_REQUIRE_LANGFUSE

    @property
    def folder(self) -> Path:
        return self.eval_root / CODEACT_TRACK


@dataclass(frozen=True)
class LabelResults:
    """One label's CodeAct evaluation, re-checked; `label`, `rates` and `hits` are what `compare_core` reads."""

    label: str
    trajectories_path: Path
    record: CodeactEvalMetrics
    task_ids: tuple[str, ...]
    rates: dict[str, float]
    hits: dict[str, tuple[bool, ...]]


@dataclass(frozen=True)
class ModelResult:
    """decision.json `models.<label>`: who acted and what metrics.json measured."""

    model: str
    trajectories: str
    engine: dict[str, Any]
    metrics: dict[str, Any]
    wall_time_s: float

    @classmethod
    def from_fields(cls, fields: RecordFields) -> ModelResult:
        return cls(
            model=fields.text("model"),
            trajectories=fields.text("trajectories"),
            engine=fields.mapping("engine"),
            metrics=fields.mapping("metrics"),
            wall_time_s=fields.number("wall_time_s"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "trajectories": self.trajectories,
            "engine": self.engine,
            "metrics": self.metrics,
            "wall_time_s": self.wall_time_s,
        }


@dataclass(frozen=True)
class CodeactDecision:
    """`<eval_root>/codeact/decision.json`, field for field in the file's order."""

    created_at: str
    rule: str
    fine_tune: int  # 1: the base SLM's success rate is below the teacher's
    reason: str
    tasks: int  # test tasks every label ran
    teacher_mode: str  # simulated or hosted
    teacher_vs_slm: ModelComparison
    models: dict[str, ModelResult]  # teacher, slm, then each adapted SLM
    adapted: dict[str, AdaptedComparison]
    config: dict[str, Any]
    files: tuple[FileRead, ...]  # every file read, with its sha256

    @classmethod
    def from_json(cls, value: Any, path: Path | str) -> CodeactDecision:
        """The record of decoded decision.json `value`; RecordError names `path` and the first bad field."""
        fields = RecordFields(value, path)
        created_at, rule = fields.text("created_at"), fields.text("rule")
        fine_tune = fields.integer("fine_tune")
        if fine_tune not in (0, 1):
            raise fields.error("fine_tune", "0 or 1")
        reason, tasks, mode = fields.text("reason"), fields.integer("tasks"), fields.text("teacher_mode")
        teacher_vs_slm = ModelComparison.from_fields(fields.object("teacher_vs_slm"), (METRIC,))
        models = {label: ModelResult.from_fields(model) for label, model in fields.objects("models").items()}
        adapted = {
            label: AdaptedComparison(
                ModelComparison.from_fields(pair.object("vs_teacher"), (METRIC,)),
                ModelComparison.from_fields(pair.object("vs_slm"), (METRIC,)),
            )
            for label, pair in fields.objects("adapted").items()
        }
        config = fields.mapping("config")
        entries = [RecordFields(entry, path, f"files.{i}") for i, entry in enumerate(fields.listed("files"))]
        files = tuple(FileRead(entry.text("path"), entry.text("sha256")) for entry in entries)
        return cls(created_at, rule, fine_tune, reason, tasks, mode, teacher_vs_slm, models, adapted, config, files)

    @classmethod
    def read(cls, path: Path) -> CodeactDecision:
        return cls.from_json(read_json_file(path), path)

    def parity(self) -> dict[str, Parity]:
        """Each student's verdicts against the teacher, by label: the base SLM, then each adapted SLM."""
        found = {self.teacher_vs_slm.candidate: self.teacher_vs_slm.parity}
        found |= {label: pair.vs_teacher.parity for label, pair in self.adapted.items()}
        return {label: parity for label, parity in found.items() if parity is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at,
            "rule": self.rule,
            "fine_tune": self.fine_tune,
            "reason": self.reason,
            "tasks": self.tasks,
            "teacher_mode": self.teacher_mode,
            "teacher_vs_slm": self.teacher_vs_slm.to_json(),
            "models": {label: model.to_json() for label, model in self.models.items()},
            "adapted": {label: pair.to_json() for label, pair in self.adapted.items()},
            "config": self.config,
            "files": [{"path": read.path, "sha256": read.sha256} for read in self.files],
        }


def eval_command(label: str, config: CodeactDecideConfig) -> str:
    if label == config.teacher_label:
        return "slm-swap eval --track codeact --model teacher"
    if label == config.slm_label:
        return "slm-swap eval --track codeact --model slm"
    return f"slm-swap eval --track codeact --model slm --adapter ADAPTER_FOLDER --label {label}"


def load_label(label: str, config: CodeactDecideConfig, read_files: dict[str, str]) -> LabelResults:
    """Read and re-check `codeact/<label>/{trajectories.jsonl,metrics.json}`; record their sha256."""
    folder = config.folder / label
    trajectories_path, metrics_path = folder / "trajectories.jsonl", folder / "metrics.json"
    rerun = f"run {eval_command(label, config)}"
    for path in (trajectories_path, metrics_path):
        if not path.is_file():
            raise DecideError(f"{path}: missing (no finished {label} evaluation); {rerun}")
        read_files[project_relative(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        record = CodeactEvalMetrics.read(metrics_path)
    except RecordError as error:
        raise DecideError(f"{error}; {rerun}") from None
    trajectories = []
    for number, line in enumerate(trajectories_path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            trajectories.append(Trajectory.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as error:
            raise DecideError(f"{trajectories_path}:{number}: not a trajectory ({error}); {rerun}") from None
    hits = tuple(trajectory_facts(trajectory).success for trajectory in trajectories)
    if record.metrics["tasks"] != len(trajectories):
        raise DecideError(
            f"{metrics_path} says tasks={record.metrics['tasks']} but {trajectories_path} has {len(trajectories)} "
            f"lines: the two files come from different runs; {rerun}"
        )
    rate = sum(hits) / len(hits) if hits else 0.0
    if abs(rate - record.success_rate) > 1e-6:
        raise DecideError(
            f"{metrics_path}: field 'metrics.success_rate' is {record.success_rate!r} but {trajectories_path} "
            f"re-checks to {rate:.6f}; {rerun}"
        )
    task_ids = tuple(trajectory.task.task_id for trajectory in trajectories)
    return LabelResults(label, trajectories_path, record, task_ids, {METRIC: rate}, {METRIC: hits})


def check_same_tasks(reference: LabelResults, candidate: LabelResults) -> None:
    """Paired statistics need the same tasks in the same order: raise DecideError naming both files."""
    ref_path, cand_path = reference.trajectories_path, candidate.trajectories_path
    if len(reference.task_ids) != len(candidate.task_ids):
        raise DecideError(
            f"{ref_path} has {len(reference.task_ids)} trajectories but {cand_path} has {len(candidate.task_ids)}: "
            "evaluate both models on the same tasks file"
        )
    for index, (ref, cand) in enumerate(zip(reference.task_ids, candidate.task_ids, strict=True)):
        if ref != cand:
            raise DecideError(
                f"{ref_path}:{index + 1} and {cand_path}:{index + 1}: task {ref} vs task {cand}: both models must "
                "run the same tasks file in the same order; re-run the stale evaluation"
            )


def compare(
    reference: LabelResults, candidate: LabelResults, config: CodeactDecideConfig, against_teacher: bool
) -> ModelComparison:
    """Success rate with interval and McNemar p (and the parity verdict against the teacher); the other rates
    and means as info (delta = reference - candidate)."""
    check_same_tasks(reference, candidate)
    margin = config.parity_margin if against_teacher else None
    core, verdicts = compare_core(reference, candidate, (METRIC,), config.bootstrap_resamples, config.seed, margin)
    ref, cand = reference.record.metrics, candidate.record.metrics
    info = {
        name: RateGap(r6(ref[name]), r6(cand[name]), r6(ref[name] - cand[name]))
        for name in INFO_METRICS
        if ref.get(name) is not None and cand.get(name) is not None
    }
    return ModelComparison(reference.label, candidate.label, core, info, verdicts)


def model_result(results: LabelResults) -> ModelResult:
    record = results.record
    trajectories = project_relative(results.trajectories_path)
    return ModelResult(record.model, trajectories, record.engine, record.metrics, record.wall_time_s)


def run_codeact_decide(config: CodeactDecideConfig) -> CodeactDecision:
    """Decide from the CodeAct results and write `<eval_root>/codeact/decision.json`; returns what it wrote."""
    if config.bootstrap_resamples < 1:
        raise DecideError(f"bootstrap_resamples must be at least 1, got {config.bootstrap_resamples}")
    if not config.teacher_label or not config.slm_label or config.teacher_label == config.slm_label:
        raise DecideError(f"teacher and slm labels must be two different names, got {config.teacher_label!r}")
    try:
        check_margin(config.parity_margin)
    except ValueError as error:
        raise DecideError(str(error)) from None
    read_files: dict[str, str] = {}
    teacher = load_label(config.teacher_label, config, read_files)
    slm = load_label(config.slm_label, config, read_files)
    adapted_labels = sorted(
        folder.name
        for folder in config.folder.iterdir()
        if (folder / "trajectories.jsonl").is_file() and folder.name not in (config.teacher_label, config.slm_label)
    )
    adapted = {label: load_label(label, config, read_files) for label in adapted_labels}

    teacher_vs_slm = compare(teacher, slm, config, against_teacher=True)
    delta = (sum(teacher.hits[METRIC]) - sum(slm.hits[METRIC])) / len(slm.task_ids)  # from counts: exact sign
    fine_tune, reason = decide_fine_tune({METRIC: delta}, teacher.label, slm.label)
    decision = CodeactDecision(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        rule=RULE,
        fine_tune=fine_tune,
        reason=reason,
        tasks=len(teacher.task_ids),
        teacher_mode=teacher.record.teacher_mode or str(teacher.record.engine.get("kind")),
        teacher_vs_slm=teacher_vs_slm,
        models={
            teacher.label: model_result(teacher),
            slm.label: model_result(slm),
            **{label: model_result(results) for label, results in adapted.items()},
        },
        adapted={
            label: AdaptedComparison(
                compare(teacher, results, config, against_teacher=True),
                compare(slm, results, config, against_teacher=False),
            )
            for label, results in adapted.items()
        },
        config={
            "eval_root": project_relative(config.eval_root),
            "teacher_label": config.teacher_label,
            "slm_label": config.slm_label,
            "bootstrap_resamples": config.bootstrap_resamples,
            "confidence": CONFIDENCE,
            "seed": config.seed,
            "parity_margin": config.parity_margin,
        },
        files=tuple(FileRead(path, digest) for path, digest in read_files.items()),
    )
    decision_path = atomic_write_json(config.folder / DECISION_FILE, decision.to_json())
    log_decision_trace(decision, decision_path, config)
    return decision


def log_decision_trace(decision: CodeactDecision, decision_path: Path, config: CodeactDecideConfig) -> None:
    """One trace for the decide run, with the fine-tune decision and the parity verdicts as an event."""
    from ray_app.tracing import start_run_trace

    gap = decision.teacher_vs_slm.core[METRIC]
    with start_run_trace(
        name="decide codeact",
        kind="decide",
        input={"files": decision.to_json()["files"]},
        metadata={"rule": decision.rule, "track": CODEACT_TRACK},
        require_langfuse=config.require_langfuse,
        local_dir=config.eval_root / "traces",
    ) as trace:
        trace.event(
            f"decision {CODEACT_TRACK}",
            input={METRIC: {"delta": gap.delta, "interval_95": list(gap.interval_95), "mcnemar_p": gap.mcnemar_p}},
            output={"FINE_TUNE": decision.fine_tune, "reason": decision.reason},
            metadata={
                "track": CODEACT_TRACK,
                "teacher_mode": decision.teacher_mode,
                "parity": parity_metadata(decision.parity()),
            },
        )
        trace.end(output={"FINE_TUNE": decision.fine_tune, "decision": project_relative(decision_path)})
