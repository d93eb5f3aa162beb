"""What the report knows about one track before any markdown is written.

`track_view` puts together a track's evaluations on disk and what decision.json decided for it:
which columns the tables show (teacher, base SLM, then the other configurations: slm-constrained,
slm-adapter, slm-adapter-constrained, any other label), why a model has no results
("not trained: FINE_TUNE=0", "not evaluated: ..."), and which results changed after decision.json
was written (the decision is then stale and the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray_app.data.rows import Track
from ray_app.decide.decide import decide_fine_tune
from ray_app.decide.decide_config import DecideConfig, eval_command
from ray_app.decide.decision_record import DECISION_FILE, Decision, TrackDecision
from ray_app.decide.model_labels import ADAPTER_LABEL, configuration_order, is_constrained
from ray_app.metrics import CORE_METRICS
from ray_app.paths import project_relative
from ray_app.report import markdown as md
from ray_app.report.inputs import RERUN_DECIDE, ModelEvaluation, TrackEvaluations, changed_since_decision


@dataclass(frozen=True)
class TrackView:
    track: Track
    loaded: TrackEvaluations
    decided: TrackDecision | None  # decision.json tracks.<track>, None when decide did not decide it
    undecided_reason: str  # why decided is None ("" when it is not)
    # labels the tables show: teacher, slm, then the other configurations (slm-adapter when no adapted one)
    columns: list[str]
    statuses: dict[str, str]  # label → why it has no results ("not trained: FINE_TUNE=0 ...")
    notes: list[str]  # results that changed after decision.json was written, unfinished folders
    labels: DecideConfig  # eval_root and the teacher / base-SLM labels decide used

    @property
    def decision_path(self) -> Path:
        return self.labels.eval_root / DECISION_FILE

    @property
    def eval_root(self) -> Path:
        return self.labels.eval_root

    def file_name(self, path: Path) -> str:
        """How the report names a file: relative to eval_root (where report.md sits), else project-relative."""
        return relative(path, self.eval_root)

    def metrics_files(self) -> list[str]:
        return [
            self.file_name(self.evaluations[label].metrics_path) for label in self.columns if label in self.evaluations
        ]

    @property
    def evaluations(self) -> dict[str, ModelEvaluation]:
        return self.loaded.evaluations

    def compared_labels(self) -> list[str]:
        """Labels decision.json has numbers for (models), in column order."""
        models = self.decided.models if self.decided is not None else {}
        return [label for label in self.columns if label in models]


def relative(path: Path, eval_root: Path) -> str:
    return path.relative_to(eval_root).as_posix() if path.is_relative_to(eval_root) else project_relative(path)


def adapter_status(track: Track, decided: TrackDecision | None) -> str:
    """Why a track has no adapted-SLM results, from its FINE_TUNE flag."""
    if decided is None:
        return "not evaluated (no decision for this track yet)"
    if decided.fine_tune == 0:
        return f"not trained: FINE_TUNE=0 ({decided.reason})"
    return f"not evaluated: FINE_TUNE=1, run `slm-swap train --track {track}` to train and evaluate it"


def track_view(track: Track, loaded: TrackEvaluations, decision: Decision | None, labels: DecideConfig) -> TrackView:
    decided = decision.tracks.get(track) if decision is not None else None
    if decision is None:
        undecided = "no decision.json: run `slm-swap decide`"
    elif decided is None:
        undecided = decision.missing.get(track, "not in decision.json: " + RERUN_DECIDE)
    else:
        undecided = ""
    others = [label for label in loaded.evaluations if label not in (labels.teacher_label, labels.slm_label)]
    if all(is_constrained(label) for label in others):  # no adapted SLM: its column says why
        others.append(ADAPTER_LABEL)
    columns = [labels.teacher_label, labels.slm_label, *configuration_order(others)]
    statuses = {}
    for label in columns:
        if label in loaded.evaluations:
            continue
        if label in loaded.unfinished:
            statuses[label] = f"not evaluated: {loaded.unfinished[label]}"
        elif label == ADAPTER_LABEL:
            statuses[label] = adapter_status(track, decided)
        else:
            statuses[label] = f"not evaluated: run `{eval_command(track, label, labels)}`"
    notes = [
        f"{md.code(f'{track}/{label}/')}: {why}" for label, why in loaded.unfinished.items() if label not in columns
    ]
    if decision is not None and decided is not None:
        for label in decided.models:
            if label not in loaded.evaluations:
                notes.append(
                    f"decision.json compares {md.code(label)} but {md.code(f'{track}/{label}/')} holds no finished "
                    f"evaluation any more; {RERUN_DECIDE}"
                )
        for label, evaluation in loaded.evaluations.items():
            if label not in decided.models:
                notes.append(
                    f"{md.code(f'{track}/{label}/')} was evaluated after decision.json was written: it has no "
                    f"gaps, tokens or cost below; {RERUN_DECIDE}"
                )
            for path in changed_since_decision(evaluation, decision):
                notes.append(
                    f"{md.code(relative(path, labels.eval_root))} changed after decision.json was written: "
                    f"the decision and its intervals may be stale; {RERUN_DECIDE}"
                )
    return TrackView(track, loaded, decided, undecided, columns, statuses, notes, labels)


def adapted_summary(view: TrackView) -> str:
    """Where each adapted SLM (free) stands against the teacher (the seed's rule applied to it), or its status."""
    adapted = [label for label in view.columns[2:] if not is_constrained(label)]
    texts = []
    for label in adapted:
        if label in view.statuses:
            texts.append(f"{label}: {view.statuses[label]}")
            continue
        if view.decided is None or label not in view.decided.adapted:
            texts.append(f"{label}: evaluated, not compared ({view.undecided_reason or RERUN_DECIDE})")
            continue
        core = view.decided.adapted[label].vs_teacher.core
        deltas = {metric: float(core[metric].delta) for metric in CORE_METRICS[view.track]}
        texts.append(decide_fine_tune(deltas, view.columns[0], label)[1])
    return "; ".join(texts)
