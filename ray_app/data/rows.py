"""Dataset rows: `{"prompt": str, "completion": str}` and nothing else, checked per track.

Every reader goes through `read_split`, so a bad row stops a run before any compute with
`file:line: reason`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ray_app.json_text import strict_json_loads
from ray_app.prompts import ToolCallFormatError, parse_gold_tool_call

Track = Literal["structured", "toolcall"]
TRACKS: tuple[Track, ...] = ("structured", "toolcall")
SPLITS = ("train", "val", "test")
ROW_KEYS = ("prompt", "completion")


@dataclass(frozen=True)
class Row:
    prompt: str
    completion: str

    def to_json(self) -> dict[str, str]:
        return {"prompt": self.prompt, "completion": self.completion}


class DatasetError(ValueError):
    """One or more rows are bad; the message lists `file:line: reason` for each."""


def row_problem(record: object, track: Track) -> str | None:
    """Why `record` is not a valid row of `track`, or None when it is."""
    if not isinstance(record, dict):
        return f"row must be a JSON object with keys prompt and completion, got {type(record).__name__}"
    keys = set(record)
    if keys != set(ROW_KEYS):
        missing = [key for key in ROW_KEYS if key not in keys]
        extra = sorted(keys - set(ROW_KEYS))
        parts = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
            [f"unexpected field(s) {', '.join(extra)}"] if extra else []
        )
        return "; ".join(parts) + " (a row has exactly prompt and completion)"
    for key in ROW_KEYS:
        if not isinstance(record[key], str):
            return f"field {key!r} must be a string, got {type(record[key]).__name__}"
        if not record[key].strip():
            return f"field {key!r} is empty"
    completion = record["completion"]
    if track == "structured":
        try:
            strict_json_loads(completion.strip())
        except ValueError as error:
            return f"field 'completion' must be pure JSON for the structured track: {error}"
    elif track == "toolcall":
        try:
            parse_gold_tool_call(completion)
        except ToolCallFormatError as error:
            return f"field 'completion': {error}"
    else:
        return f"unknown track {track!r} (expected one of {', '.join(TRACKS)})"
    return None


def track_from_path(path: Path) -> Track | None:
    """`.../structured/test.jsonl` → "structured"; None when no folder names a track."""
    for part in reversed(path.resolve().parts[:-1]):
        if part in TRACKS:
            return part  # type: ignore[return-value]
    return None


def split_problems(path: Path, track: Track, max_problems: int = 20) -> tuple[list[Row], list[str]]:
    """Read every line of `path`; return the good rows and up to `max_problems` `file:line: reason`."""
    rows: list[Row] = []
    problems: list[str] = []
    first_line_of_prompt: dict[str, int] = {}
    if not path.is_file():
        return rows, [f"{path}: file not found"]
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                problem = "empty line (JSONL wants one row per line)"
            else:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    record, problem = None, f"not valid JSON: {error.msg} at column {error.colno}"
                else:
                    problem = row_problem(record, track)
                if problem is None:
                    first = first_line_of_prompt.setdefault(record["prompt"], line_number)
                    if first != line_number:
                        problem = f"duplicate prompt (first seen at line {first})"
            if problem is None:
                rows.append(Row(record["prompt"], record["completion"]))
            elif len(problems) < max_problems:
                problems.append(f"{path}:{line_number}: {problem}")
            else:
                problems[-1] = f"{path}: more bad rows not shown"
    if not rows and not problems:
        problems.append(f"{path}: the split is empty")
    return rows, problems


def read_split(path: str | Path, track: Track | None = None) -> list[Row]:
    """All rows of a split file, or DatasetError naming each bad line."""
    path = Path(path)
    track = track or track_from_path(path)
    if track is None:
        raise DatasetError(f"{path}: cannot tell the track; put it under structured/ or toolcall/ or pass --track")
    rows, problems = split_problems(path, track)
    if problems:
        raise DatasetError("\n".join(problems))
    return rows
