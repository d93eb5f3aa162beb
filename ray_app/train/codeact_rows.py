"""Read and check a CodeAct split (`02_dataset/codeact/{train,val}.jsonl`) before any compute.

The row format is `codeact.trajectory_dataset`'s: `{"trajectory_id", "task_id", "kind", "model",
"source_trace_id", "recovered", "messages"}`, each message `{"role": "system"|"user"|"assistant",
"content": str}` plus `"observation": true` on observation turns (user turns). A bad line stops the
run with `file:line: field ...: expected ...`; a row without an assistant turn is not bad data here:
tokenizing reports it as fully masked (`codeact_examples`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray_app.codeact.trajectory_dataset import CHAT_ROLES
from ray_app.data.rows import DatasetError

MAX_PROBLEMS = 20


def codeact_row_problem(record: object) -> str | None:
    """What is wrong with one decoded line, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("trajectory_id"), str) or not record["trajectory_id"]:
        return "field 'trajectory_id': expected a non-empty string"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field 'messages': expected a non-empty list of chat messages"
    for index, message in enumerate(messages):
        where = f"field 'messages[{index}]"
        if not isinstance(message, dict):
            return f"{where}': expected an object with role and content"
        if message.get("role") not in CHAT_ROLES:
            return f"{where}.role': expected one of {', '.join(CHAT_ROLES)}, got {message.get('role')!r}"
        if not isinstance(message.get("content"), str):
            return f"{where}.content': expected a string"
        if message.get("observation") not in (None, True):
            return f"{where}.observation': expected true or absent"
        if message.get("observation") and message["role"] != "user":
            return f"{where}.observation': only a user turn can be an observation, this is {message['role']}"
    return None


def read_codeact_split(path: Path, required: bool = True) -> list[dict[str, Any]]:
    """Every row of the split, or DatasetError naming each bad line (up to MAX_PROBLEMS). An empty or
    missing split is an error when `required` (train), else no rows (a small capture may have no val)."""
    if not path.is_file():
        if required:
            raise DatasetError(f"{path}: file not found (build it with `slm-swap data trajectories`)")
        return []
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                record, problem = None, f"not valid JSON: {error.msg} at column {error.colno}"
            else:
                problem = codeact_row_problem(record)
            if problem is None:
                first = seen.setdefault(record["trajectory_id"], line_number)
                if first != line_number:
                    problem = f"duplicate trajectory_id (first seen at line {first})"
            if problem is None:
                rows.append(record)
            elif len(problems) < MAX_PROBLEMS:
                problems.append(f"{path}:{line_number}: {problem}")
    if problems:
        raise DatasetError("\n".join(problems))
    if not rows and required:
        raise DatasetError(f"{path}: no training rows")
    return rows
