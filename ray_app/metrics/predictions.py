"""The predictions file an evaluation writes, its validation, and scoring it.

JSONL, one line per test row in split order:
`{"index": int, "prompt": str, "completion": str (gold), "prediction": str (raw model text),
"latency_s": float, "prompt_tokens": int, "completion_tokens": int}`. Extra keys are ignored, so a
writer may add diagnostics without breaking old readers.

`latency_s` is optional: the evaluate step writes measured latencies to `timings.jsonl` beside the
predictions, so that `predictions.jsonl` holds only what the model produced and is byte-identical
when the same evaluation runs twice. A hand-made file may carry it inline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.data.rows import TRACKS, Track, row_problem
from ray_app.metrics.tracks import score_rows
from ray_app.text_files import TextFileError, utf8_lines

MAX_PROBLEMS = 20


@dataclass(frozen=True)
class PredictionRecord:
    """One line of a predictions file."""

    index: int
    prompt: str
    completion: str
    prediction: str
    latency_s: float | None
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict[str, Any]:
        record = {
            "index": self.index,
            "prompt": self.prompt,
            "completion": self.completion,
            "prediction": self.prediction,
            "latency_s": self.latency_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.latency_s is None:
            del record["latency_s"]
        return record


class PredictionsFileError(ValueError):
    """A predictions file is malformed; the message lists `file:line: reason` for each bad line."""


# Field → what a valid value is, in the order a line lists them.
EXPECTED_FIELDS = {
    "index": "a non-negative integer",
    "prompt": "a string",
    "completion": "a string",
    "prediction": "a string",
    "latency_s": "a non-negative number of seconds (optional)",
    "prompt_tokens": "a non-negative integer",
    "completion_tokens": "a non-negative integer",
}


def _value_fits(key: str, value: Any) -> bool:
    if key in ("prompt", "completion", "prediction"):
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return False
    if key == "latency_s":
        return math.isfinite(value)  # json.loads lets NaN/Infinity through
    return isinstance(value, int)


def _field_problem(record: dict[str, Any], expected_index: int) -> str | None:
    """Why a parsed line is not a prediction record, or None when it is."""
    for key, expected in EXPECTED_FIELDS.items():
        if key == "latency_s" and key not in record:
            continue
        if key not in record:
            return f"missing field {key!r} (expected {expected})"
        if not _value_fits(key, record[key]):
            return f"field {key!r} must be {expected}, got {json.dumps(record[key], ensure_ascii=False)[:80]}"
    if record["index"] != expected_index:
        return (
            f"field 'index' is {record['index']}, expected {expected_index} "
            "(indexes must be 0..n-1 in split order, one line per test row)"
        )
    return None


def _line_problem(line: str, expected_index: int) -> tuple[PredictionRecord | None, str | None]:
    if not line.strip():
        return None, "empty line (JSONL wants one prediction per line)"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON: {error.msg} at column {error.colno}"
    if not isinstance(record, dict):
        return None, f"line must be a JSON object, got {type(record).__name__}"
    problem = _field_problem(record, expected_index)
    if problem is not None:
        return None, problem
    fields = {key: record.get(key) for key in EXPECTED_FIELDS}
    latency = fields["latency_s"]
    return PredictionRecord(**{**fields, "latency_s": None if latency is None else float(latency)}), None


def read_predictions(path: str | Path) -> list[PredictionRecord]:
    """Every record of a predictions file, or PredictionsFileError naming each bad line (up to 20)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsFileError(f"{path}: file not found (write it with the evaluate step)")
    records: list[PredictionRecord] = []
    problems: list[str] = []
    try:
        for line_number, line in utf8_lines(path):
            record, problem = _line_problem(line, expected_index=line_number - 1)
            if record is not None:
                records.append(record)
            elif len(problems) < MAX_PROBLEMS:
                problems.append(f"{path}:{line_number}: {problem}")
            else:
                problems[-1] = f"{path}: more bad lines not shown"
    except TextFileError as error:  # reading stops at the first line that is not UTF-8
        problems = [*problems[: MAX_PROBLEMS - 1], str(error)]
    if not records and not problems:
        problems.append(f"{path}: the predictions file is empty")
    if problems:
        raise PredictionsFileError("\n".join(problems))
    return records


def score_predictions_file(track: Track, path: str | Path) -> dict[str, float | int]:
    """The track's metrics (`score_rows`) of a predictions file: a flat, JSON-serialisable dict.

    Raises PredictionsFileError (`file:line: reason`) for a malformed line or a gold completion
    that is not valid for the track.
    """
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r} (expected one of {', '.join(TRACKS)})")
    records = read_predictions(path)
    problems = []
    for line_number, record in enumerate(records, start=1):
        problem = row_problem({"prompt": record.prompt, "completion": record.completion}, track)
        if problem is not None and len(problems) < MAX_PROBLEMS:
            problems.append(f"{path}:{line_number}: {problem}")
    if problems:
        raise PredictionsFileError("\n".join(problems))
    return score_rows(
        track,
        golds=[record.completion for record in records],
        predictions=[record.prediction for record in records],
        prompts=[record.prompt for record in records],
    )
