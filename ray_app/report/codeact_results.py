"""What the report reads under `<eval_root>/codeact/`: decision.json, each label's metrics.json, trajectories.

`load_results(eval_root)` returns a `CodeactResults` (the decision, the columns to show: teacher, base SLM,
then each adapted SLM, and why a column has no results) and the files it read; `read_trajectories` reads a
label's trajectories.jsonl. A malformed file raises ReportError naming the file (and line) and the command
that writes it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ray_app.codeact.records import Trajectory
from ray_app.decide.codeact_decide import DECISION_FILE, CodeactDecideConfig, CodeactDecision, eval_command
from ray_app.eval.codeact_store import TRAJECTORIES_NAME
from ray_app.metrics.codeact import CODEACT_TRACK, CodeactEvalMetrics
from ray_app.metrics.metrics_record import METRICS_FILE
from ray_app.record_fields import RecordError
from ray_app.report.inputs import ReportError
from ray_app.report.track_view import relative

ADAPTED_LABEL = "slm-codeact"  # what `slm-swap eval --track codeact --adapter ...` labels the adapted SLM
DECIDE_COMMAND = "slm-swap decide --track codeact"


@dataclass(frozen=True)
class CodeactResults:
    """What `<eval_root>/codeact/` holds: the decision and each label's metrics.json."""

    config: CodeactDecideConfig  # eval_root and the teacher / base-SLM labels decide used
    decision: CodeactDecision | None
    columns: list[str]  # teacher, slm, then adapted SLMs (slm-codeact when there is none)
    records: dict[str, CodeactEvalMetrics]
    statuses: dict[str, str]  # label → why it has no results

    def name(self, path: Path) -> str:
        """A file as the report names it: relative to eval_root (where report.md sits), else project-relative."""
        return relative(path, self.config.eval_root)

    def path(self, label: str, file: str) -> Path:
        return self.config.folder / label / file


def load_results(eval_root: Path) -> tuple[CodeactResults, list[Path]]:
    """decision.json and every label's metrics.json under `<eval_root>/codeact/`, and the files read."""
    folder, read = eval_root / CODEACT_TRACK, []
    decision = None
    if (folder / DECISION_FILE).is_file():
        try:
            decision = CodeactDecision.read(folder / DECISION_FILE)
        except RecordError as error:
            raise ReportError(f"{error}; re-run `{DECIDE_COMMAND}`") from None
        read.append(folder / DECISION_FILE)
    labels = decision.config if decision is not None else {}
    config = CodeactDecideConfig(
        eval_root=eval_root,
        teacher_label=labels.get("teacher_label", "teacher"),
        slm_label=labels.get("slm_label", "slm"),
    )
    first = [config.teacher_label, config.slm_label]
    found = sorted(
        entry.name
        for entry in (folder.iterdir() if folder.is_dir() else ())
        if entry.is_dir() and entry.name not in first
        and ((entry / METRICS_FILE).is_file() or (entry / TRAJECTORIES_NAME).is_file())
    )  # fmt: skip
    columns = [*first, *(found or [ADAPTED_LABEL])]
    records, statuses = {}, {}
    for label in columns:
        path, rerun = folder / label / METRICS_FILE, eval_command(label, config)
        if path.is_file():
            try:
                records[label] = CodeactEvalMetrics.read(path)
            except RecordError as error:
                raise ReportError(f"{error}; re-run `{rerun}`") from None
            read.append(path)
        elif label == ADAPTED_LABEL and decision is not None and decision.fine_tune == 0:
            statuses[label] = f"not trained: FINE_TUNE=0 ({decision.reason})"
        elif label == ADAPTED_LABEL:
            statuses[label] = f"not evaluated: train it (`slm-swap train --track codeact`), then run `{rerun}`"
        else:
            statuses[label] = f"not evaluated: run `{rerun}`"
    return CodeactResults(config, decision, columns, records, statuses), read


def read_trajectories(path: Path, rerun: str) -> list[Trajectory]:
    trajectories = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            trajectories.append(Trajectory.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as error:
            raise ReportError(f"{path}:{number}: not a trajectory ({error}); re-run `{rerun}`") from None
    return trajectories
