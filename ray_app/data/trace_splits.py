"""Traces → splits: read a trace export (or pull from Langfuse), convert, dedup, split, write.

Writes `<output_root>/{structured,toolcall}/{train,val,test}.jsonl` for each track that has rows
and returns a summary (rows per track/split, generations skipped by reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.data.rows import TRACKS, Track
from ray_app.data.splits import SplitSizes, assign_splits, dedup_candidates, write_track_splits
from ray_app.data.traces import TraceConversion, convert_traces
from ray_app.text_files import TextFileError, utf8_lines


class TraceFileError(ValueError):
    pass


@dataclass
class TraceSplitSummary:
    conversion: TraceConversion
    written: dict[Track, dict[str, int]] = field(default_factory=dict)
    duplicates: dict[Track, int] = field(default_factory=dict)
    paths: dict[Track, dict[str, Path]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "traces_read": self.conversion.traces_read,
            "traces_matched": self.conversion.traces_matched,
            "generations_seen": self.conversion.generations_seen,
            "rows_written": self.written,
            "duplicate_prompts_dropped": self.duplicates,
            "skipped": dict(sorted(self.conversion.skipped.items())),
        }


def read_trace_jsonl(path: Path) -> list[dict[str, Any]]:
    """One trace per line; a bad line (not UTF-8, not JSON, not an object) raises `file:line: reason`."""
    traces = []
    try:
        for line_number, line in utf8_lines(path):
            if not line.strip():
                continue
            try:
                trace = json.loads(line)
            except json.JSONDecodeError as error:
                raise TraceFileError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(trace, dict):
                raise TraceFileError(f"{path}:{line_number}: a trace must be a JSON object")
            if not isinstance(trace.get("observations", []), list):
                raise TraceFileError(f"{path}:{line_number}: field 'observations' must be a list")
            traces.append(trace)
    except TextFileError as error:
        raise TraceFileError(str(error)) from None
    return traces


def build_trace_splits(
    traces: list[dict[str, Any]], agent_id: str, output_root: Path, sizes: SplitSizes = SplitSizes()
) -> TraceSplitSummary:
    """Convert the agent's generations and write deterministic splits for each non-empty track."""
    summary = TraceSplitSummary(conversion=convert_traces(traces, agent_id))
    for track in TRACKS:
        unique, duplicates = dedup_candidates(summary.conversion.candidates[track])
        summary.duplicates[track] = duplicates
        if not unique:
            continue
        splits = assign_splits(unique, sizes.scaled_to(len(unique)))
        summary.paths[track] = write_track_splits(output_root, track, splits)
        summary.written[track] = {split: len(rows) for split, rows in splits.items()}
    return summary
