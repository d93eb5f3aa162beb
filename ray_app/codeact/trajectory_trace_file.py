"""Trace records (a JSONL file, or traces pulled from Langfuse) → trajectories, every problem collected.

A line that is not JSON, not an object, or a CodeAct trace that does not rebuild into a trajectory is
an error `file:line: reason`; all of them are collected and raised together (`TrajectoryTraceFileError`)
before anything is filtered or written. Traces of other agents are skipped and counted, and so is a
second trace of a trajectory already read (the first one is kept).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.codeact.records import Trajectory
from ray_app.codeact.trajectory_trace import TrajectoryTraceError, is_trajectory_trace, trajectory_from_trace

MAX_ERRORS_SHOWN = 20
NOT_A_TRAJECTORY = "not a CodeAct trajectory trace"
DUPLICATE_TRAJECTORY = "second trace of the same trajectory"


class TrajectoryTraceFileError(ValueError):
    """One or more traces are broken; the message has one `origin: reason` line per problem."""


@dataclass(frozen=True)
class TracedTrajectory:
    trajectory: Trajectory
    trace_id: str  # the trace it was read from (the manifest's source trace id)
    origin: str  # "traces.jsonl:12" or "langfuse:<trace id>"


@dataclass
class TrajectoryTraces:
    traced: list[TracedTrajectory] = field(default_factory=list)
    traces_read: int = 0
    skipped: Counter = field(default_factory=Counter)


class _TraceReader:
    """Adds traces one at a time; problems are collected, in the order the traces came."""

    def __init__(self) -> None:
        self.result = TrajectoryTraces()
        self.errors: list[str] = []
        self._seen: set[str] = set()

    def add(self, origin: str, trace: Any) -> None:
        self.result.traces_read += 1
        if not isinstance(trace, dict):
            self.errors.append(f"{origin}: a trace must be a JSON object, got {type(trace).__name__}")
        elif not isinstance(trace.get("observations", []), list):
            self.errors.append(f"{origin}: field 'observations' must be a list")
        elif not is_trajectory_trace(trace):
            self.result.skipped[NOT_A_TRAJECTORY] += 1
        else:
            try:
                trajectory = trajectory_from_trace(trace)
            except TrajectoryTraceError as error:
                self.errors.append(f"{origin}: {error}")
                return
            if trajectory.trajectory_id in self._seen:
                self.result.skipped[DUPLICATE_TRAJECTORY] += 1
                return
            self._seen.add(trajectory.trajectory_id)
            self.result.traced.append(TracedTrajectory(trajectory, str(trace.get("id") or ""), origin))

    def finish(self) -> TrajectoryTraces:
        if self.errors:
            shown = self.errors[:MAX_ERRORS_SHOWN]
            if len(self.errors) > MAX_ERRORS_SHOWN:
                shown.append(f"... and {len(self.errors) - MAX_ERRORS_SHOWN} more broken trace(s)")
            raise TrajectoryTraceFileError("\n".join(shown))
        return self.result


def trajectories_from_traces(traces: Iterable[tuple[str, Any]]) -> TrajectoryTraces:
    """(origin, trace) pairs → trajectories; raises TrajectoryTraceFileError listing every broken trace."""
    reader = _TraceReader()
    for origin, trace in traces:
        reader.add(origin, trace)
    return reader.finish()


def read_trajectory_trace_file(path: str | Path) -> TrajectoryTraces:
    """Every trajectory of a trace JSONL file (one trace per line, blank lines allowed)."""
    path = Path(path)
    reader = _TraceReader()
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                trace = json.loads(line)
            except json.JSONDecodeError as error:
                reader.errors.append(f"{path}:{line_number}: not valid JSON ({error.msg} at column {error.colno})")
                continue
            reader.add(f"{path}:{line_number}", trace)
    return reader.finish()
