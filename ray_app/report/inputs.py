"""What the report reads, checked: decision.json, each label's evaluation folder, the test split.

- `<eval_root>/decision.json` (the decide step, read as its `Decision` record); absent → None, the
  report says to run decide.
- `<eval_root>/<track>/<label>/metrics.json` (its `EvalMetrics` record), `predictions.jsonl` and
  `timings.jsonl` (the evaluate step). A folder with predictions but no metrics.json is an
  unfinished evaluation: listed, not read.
- `<dataset_root>/<track>/<split>.jsonl`, the split the evaluations answered (for gold rows).

A malformed file raises ReportError naming the file, the line or field, and the command that
rewrites it; a missing track, model or file is never an error: the report says what is missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ray_app.data.rows import DatasetError, Row, Track, read_split
from ray_app.decide.decide_config import DecideConfig, eval_command
from ray_app.decide.decision_record import DECISION_FILE, Decision
from ray_app.eval.prediction_store import PREDICTIONS_NAME, TIMINGS_NAME
from ray_app.metrics import PredictionRecord, PredictionsFileError, read_predictions
from ray_app.metrics.metrics_record import METRICS_FILE, EvalMetrics
from ray_app.paths import project_relative
from ray_app.record_fields import RecordError, is_number

RERUN_DECIDE = "re-run `slm-swap decide`"


class ReportError(ValueError):
    """An input the report cannot read; the message names the file, the line or field, and what to run."""


@dataclass(frozen=True)
class ModelEvaluation:
    """One label's finished evaluation of one track."""

    label: str
    metrics_path: Path
    predictions_path: Path
    summary: EvalMetrics  # metrics.json
    records: tuple[PredictionRecord, ...]
    latencies_s: tuple[float, ...] | None  # per row, in split order; None when nothing recorded them
    latencies_path: Path | None  # timings.jsonl, or predictions.jsonl when the latencies are inline


@dataclass(frozen=True)
class TrackEvaluations:
    track: Track
    evaluations: dict[str, ModelEvaluation]  # label → results, in the order the report shows them
    unfinished: dict[str, str]  # label → why its folder holds no finished evaluation
    split_path: Path
    split_rows: tuple[Row, ...] | None  # None when the split file is not there


# ---- decision.json ----


def load_decision(eval_root: Path) -> Decision | None:
    """decision.json's record, or None when decide has not run."""
    path = eval_root / DECISION_FILE
    if not path.is_file():
        return None
    try:
        return Decision.read(path)
    except RecordError as error:
        raise ReportError(f"{error}; {RERUN_DECIDE}") from None


def changed_since_decision(evaluation: ModelEvaluation, decision: Decision) -> list[Path]:
    """The evaluation's files whose bytes differ from what decision.json records (the decision is stale)."""
    digests = decision.digests()
    changed = []
    for path in (evaluation.metrics_path, evaluation.predictions_path):
        recorded = digests.get(project_relative(path))
        if recorded is not None and recorded != hashlib.sha256(path.read_bytes()).hexdigest():
            changed.append(path)
    return changed


# ---- one label's evaluation folder ----


def read_timings(path: Path, rows: int, rerun: str) -> tuple[float, ...]:
    """timings.jsonl: `{"index": i, "latency_s": s}` for i = 0..rows-1, in order."""
    latencies = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportError(f"{path}:{line_number}: not valid JSON: {error.msg}; {rerun}") from None
            if not isinstance(record, dict) or record.get("index") != line_number - 1:
                raise ReportError(f"{path}:{line_number}: field 'index' must be {line_number - 1}; {rerun}")
            latency = record.get("latency_s")
            if not is_number(latency) or latency < 0:
                raise ReportError(f"{path}:{line_number}: field 'latency_s' must be a non-negative number; {rerun}")
            latencies.append(float(latency))
    if len(latencies) != rows:
        raise ReportError(f"{path}: {len(latencies)} lines but the evaluation has {rows} rows; {rerun}")
    return tuple(latencies)


def load_model_evaluation(track: Track, label: str, folder: Path, rerun: str) -> ModelEvaluation:
    metrics_path, predictions_path = folder / METRICS_FILE, folder / PREDICTIONS_NAME
    try:
        summary = EvalMetrics.read(metrics_path)
    except RecordError as error:
        raise ReportError(f"{error}; {rerun}") from None
    if summary.track != track:
        raise ReportError(
            f"{metrics_path}: field 'track' is {summary.track!r} but the file sits under {track}/; {rerun}"
        )
    try:
        records = tuple(read_predictions(predictions_path))
    except PredictionsFileError as error:
        raise ReportError(f"{error}\n{rerun}") from None
    if summary.rows != len(records):
        raise ReportError(
            f"{metrics_path} says rows={summary.rows} but {predictions_path} has {len(records)} lines: "
            f"the two files come from different runs; {rerun}"
        )
    timings_path = folder / TIMINGS_NAME
    latencies: tuple[float, ...] | None = None
    latencies_path: Path | None = None
    if timings_path.is_file():
        latencies, latencies_path = read_timings(timings_path, len(records), rerun), timings_path
    elif all(record.latency_s is not None for record in records):  # a hand-made file with inline latencies
        latencies = tuple(float(record.latency_s) for record in records)  # type: ignore[arg-type]
        latencies_path = predictions_path
    return ModelEvaluation(label, metrics_path, predictions_path, summary, records, latencies, latencies_path)


def evaluated_labels(track_root: Path, teacher_label: str, slm_label: str) -> list[str]:
    """Labels with an evaluation folder: teacher, base SLM, then adapted SLMs sorted by name."""
    if not track_root.is_dir():
        return []
    found = {
        folder.name
        for folder in track_root.iterdir()
        if folder.is_dir() and ((folder / PREDICTIONS_NAME).is_file() or (folder / METRICS_FILE).is_file())
    }
    first = [label for label in (teacher_label, slm_label) if label in found]
    return first + sorted(found - {teacher_label, slm_label})


def load_split(path: Path, track: Track) -> tuple[Row, ...] | None:
    if not path.is_file():
        return None
    try:
        return tuple(read_split(path, track))
    except DatasetError as error:
        raise ReportError(f"{error}\nfix the split (`slm-swap data validate {path}` lists every bad row)") from None


def load_track(track: Track, dataset_root: Path, labels: DecideConfig) -> TrackEvaluations:
    """Every finished evaluation of `track` under `labels.eval_root`, and the split they answered."""
    eval_root = labels.eval_root
    evaluations: dict[str, ModelEvaluation] = {}
    unfinished: dict[str, str] = {}
    for label in evaluated_labels(eval_root / track, labels.teacher_label, labels.slm_label):
        folder = eval_root / track / label
        rerun = f"re-run `{eval_command(track, label, labels)}`"
        if not (folder / METRICS_FILE).is_file() or not (folder / PREDICTIONS_NAME).is_file():
            present = METRICS_FILE if (folder / METRICS_FILE).is_file() else PREDICTIONS_NAME
            unfinished[label] = f"only {present} in {track}/{label}/ (an interrupted evaluation?); {rerun}"
            continue
        evaluations[label] = load_model_evaluation(track, label, folder, rerun)
    splits = {evaluation.summary.split or "test" for evaluation in evaluations.values()}
    split = splits.pop() if len(splits) == 1 else "test"
    split_path = dataset_root / track / f"{split}.jsonl"
    return TrackEvaluations(track, evaluations, unfinished, split_path, load_split(split_path, track))
