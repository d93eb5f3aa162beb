"""Writes that never leave a half-written file: write a temp file beside the target, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary write would have.
        os.chmod(temp_name, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def complete_jsonl_lines(path: str | Path, cut_torn_tail: bool) -> list[Any]:
    """The JSON lines of an appended file up to the first incomplete or broken one (a write cut by a
    kill); with `cut_torn_tail` that tail is cut off the file, so the next append starts clean."""
    path = Path(path)
    if not path.is_file():
        return []
    values, good_bytes = [], 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # torn write from a kill: everything before it is complete
            try:
                values.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
    if cut_torn_tail:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return values
