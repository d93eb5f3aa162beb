"""The local-file backend: one run's trace as `<local_dir>/<run_id>.json`, written atomically.

The file is written when the run starts (status "running"), again whenever a top-level span ends,
an event is logged or a child run starts, and at the end, so a killed run still leaves valid JSON.
A child run (`parent=`) writes its own file with the parent's `trace_id` plus `parent_trace_id`
and `parent_run_id`; the parent's file lists it under `children`.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def observation_record(name: str, input: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "start_time": utc_now(),
        "end_time": None,
        "status": "running",
        "error": None,
        "input": input,
        "output": None,
        "metadata": metadata,
        "spans": [],
        "events": [],
    }


class LocalTraceFile:
    """The whole run record and the file it lives in; one lock guards both (spans may end on threads)."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record
        self.lock = threading.RLock()
        self.save()

    def save(self) -> None:
        with self.lock:
            atomic_write_json(self.path, self.record)


class LocalObservation:
    """The run's root (`record` is the file's top level) or one span inside it."""

    def __init__(self, trace_file: LocalTraceFile, record: dict[str, Any], depth: int) -> None:
        self.trace_file = trace_file
        self.record = record
        self.depth = depth  # 0: the run itself, 1: a top-level span

    def child(self, name: str, input: Any, metadata: dict[str, Any]) -> LocalObservation:
        record = observation_record(name, input, metadata)
        with self.trace_file.lock:
            self.record["spans"].append(record)
        return LocalObservation(self.trace_file, record, self.depth + 1)

    def update(self, output: Any, metadata: dict[str, Any]) -> None:
        with self.trace_file.lock:
            if output is not None:
                self.record["output"] = output
            self.record["metadata"].update(metadata)

    def event(self, name: str, input: Any, output: Any, metadata: dict[str, Any], level: str) -> None:
        event = {
            "name": name,
            "time": utc_now(),
            "level": level,
            "input": input,
            "output": output,
            "metadata": metadata,
        }
        with self.trace_file.lock:
            self.record["events"].append(event)
        self.trace_file.save()

    def end(self, status: str, error: str | None) -> None:
        with self.trace_file.lock:
            self.record.update(end_time=utc_now(), status=status, error=error)
        if self.depth <= 1:
            self.trace_file.save()

    def add_child_run(self, summary: dict[str, Any]) -> None:
        with self.trace_file.lock:
            self.record["children"].append(summary)
        self.trace_file.save()


def start_local_trace(
    path: Path,
    *,
    trace_id: str,
    run_id: str,
    name: str,
    kind: str,
    input: Any,
    metadata: dict[str, Any],
    parent: dict[str, str] | None,
) -> LocalObservation:
    record = {
        "trace_id": trace_id,
        "run_id": run_id,
        "name": name,
        "kind": kind,
        "backend": "local-file",
        "parent_trace_id": parent["trace_id"] if parent else None,
        "parent_run_id": parent["run_id"] if parent else None,
        **observation_record(name, input, metadata),
        "children": [],
    }
    return LocalObservation(LocalTraceFile(path, record), record, depth=0)
