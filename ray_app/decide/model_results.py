"""One label's evaluation of one track as the decide step compares it: read, checked and re-scored.

`load_model_results` reads `<eval_root>/<track>/<label>/{predictions.jsonl,metrics.json}`, checks that
the two files come from the same run and that metrics.json's core rates are what the predictions
re-score to, and keeps each row's hits for the paired statistics; `check_same_rows` refuses to pair two
labels that did not answer the same rows in the same order. Every error names the file, the line or
field, and the command that writes it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ray_app.data.rows import Track
from ray_app.decide.decide_config import DecideConfig, DecideError, eval_command
from ray_app.metrics import (
    CORE_METRICS,
    PredictionRecord,
    read_predictions,
    score_rows,
    score_structured_row,
    score_toolcall_row,
)
from ray_app.metrics.metrics_record import METRICS_FILE, EvalMetrics
from ray_app.paths import project_relative
from ray_app.record_fields import RecordError


class PairedHits(Protocol):
    """What the comparison reads of one model's results (`ModelResults`, codeact's `LabelResults`)."""

    @property
    def label(self) -> str: ...
    @property
    def rates(self) -> dict[str, float]: ...
    @property
    def hits(self) -> dict[str, tuple[bool, ...]]: ...


@dataclass(frozen=True)
class ModelResults:
    """One label's evaluation of one track, re-scored."""

    label: str
    predictions_path: Path
    metrics_path: Path
    records: tuple[PredictionRecord, ...]
    summary: EvalMetrics  # metrics.json
    rates: dict[str, float]  # re-scored rates (score_rows), core and info
    hits: dict[str, tuple[bool, ...]]  # per-row hits by rate name, for metrics scored per row


def check_same_rows(reference: ModelResults, candidate: ModelResults) -> None:
    """Paired statistics need the same rows in the same order: raise DecideError naming both files."""
    ref_path, cand_path = reference.predictions_path, candidate.predictions_path
    if len(reference.records) != len(candidate.records):
        raise DecideError(
            f"{ref_path} has {len(reference.records)} rows but {cand_path} has {len(candidate.records)}: "
            "evaluate both models on the same test split"
        )
    for index, (ref, cand) in enumerate(zip(reference.records, candidate.records, strict=True)):
        for field in ("prompt", "completion"):
            if getattr(ref, field) != getattr(cand, field):
                raise DecideError(
                    f"{ref_path}:{index + 1} and {cand_path}:{index + 1}: different {field!r} at row {index}: "
                    "both models must answer the same test split in the same order; re-run the stale evaluation"
                )


def row_hits(track: Track, records: Sequence[PredictionRecord]) -> dict[str, tuple[bool, ...]]:
    """Per-row hits of every metric scored per row, keyed by rate name (e.g. 'exact_match_rate')."""
    if track == "structured":
        scores: list[Any] = [score_structured_row(record.completion, record.prediction) for record in records]
    else:
        scores = [score_toolcall_row(record.completion, record.prediction, record.prompt) for record in records]
    names = [name for name, value in vars(scores[0]).items() if isinstance(value, bool)]
    return {f"{name}_rate": tuple(getattr(score, name) for score in scores) for name in names}


def read_summary(track: Track, metrics_path: Path, rerun: str) -> EvalMetrics:
    """metrics.json as the decide step needs it: its record, for this track, with every latency."""
    try:
        summary = EvalMetrics.read(metrics_path)
    except RecordError as error:
        raise DecideError(f"{error}; {rerun}") from None
    if summary.track != track:
        raise DecideError(f"{metrics_path}: field 'track' is {summary.track!r} but the file sits under {track}/")
    for key, value in summary.latency_s.to_json().items():
        if value is None:
            raise DecideError(f"{metrics_path}: field 'latency_s.{key}' is null (no row answered); {rerun}")
    return summary


def load_model_results(track: Track, label: str, config: DecideConfig, read_files: dict[str, str]) -> ModelResults:
    """Read, check and re-score `<eval_root>/<track>/<label>/{predictions.jsonl,metrics.json}`.

    Records each file's sha256 in `read_files` (project-relative path → digest).
    """
    folder = config.eval_root / track / label
    predictions_path, metrics_path = folder / "predictions.jsonl", folder / METRICS_FILE
    rerun = f"re-run {eval_command(track, label, config)}"
    if not metrics_path.is_file():
        raise DecideError(f"{metrics_path}: missing beside {predictions_path} (an interrupted evaluation?); {rerun}")
    for path in (predictions_path, metrics_path):
        read_files[project_relative(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    records = tuple(read_predictions(predictions_path))
    summary = read_summary(track, metrics_path, rerun)
    if summary.rows != len(records):
        raise DecideError(
            f"{metrics_path} says rows={summary.rows} but {predictions_path} has {len(records)} lines: "
            f"the two files come from different runs; {rerun}"
        )
    try:
        scored = score_rows(
            track,
            golds=[record.completion for record in records],
            predictions=[record.prediction for record in records],
            prompts=[record.prompt for record in records],
        )
    except ValueError as error:
        raise DecideError(f"{predictions_path}: {error}") from None
    rates = {key: float(value) for key, value in scored.items() if key.endswith("_rate") or key.startswith("field_")}
    for metric in CORE_METRICS[track]:
        written = summary.metrics[metric]
        if abs(written - rates[metric]) > 1e-6:
            raise DecideError(
                f"{metrics_path}: field 'metrics.{metric}' is {written!r} but {predictions_path} re-scores to "
                f"{rates[metric]:.6f}; {rerun}"
            )
    return ModelResults(label, predictions_path, metrics_path, records, summary, rates, row_hits(track, records))
