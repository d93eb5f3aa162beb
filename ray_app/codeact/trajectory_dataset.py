"""Accepted trajectories → the CodeAct dataset, rows for the seed's two tracks, and a manifest.

Writes, under `out_dir` (default `slm_swap/02_dataset/codeact/`; each file atomically, in a fixed order,
the same bytes for the same input):

- `{train,val,test}.jsonl`: the CodeAct rows, one per accepted trajectory, keys in this order:
  `{"trajectory_id", "task_id", "kind", "model", "source_trace_id", "recovered", "messages"}`;
  `messages` is the chat as the model saw it, each `{"role": "system"|"user"|"assistant", "content": str}`,
  observation turns (user turns holding `Observation: ...`) with `"observation": true` as a third key.
  Training computes the loss on the assistant turns only (everything else labelled -100).
- `derived/toolcall/{split}.jsonl`: for toolcall tasks, the trajectory's last call the stub accepted → prompt
  `toolcall_prompt(task tools, request)`, completion `format_tool_call(name, arguments)`.
- `derived/structured/{split}.jsonl`: for structured and multi-step tasks whose final answer is a JSON object or
  array → prompt `structured_prompt_from_instruction(instruction, request)`, completion the readable JSON.
  Both hold exactly `prompt` / `completion` and pass `data.rows.row_problem`; a prompt seen twice in a
  track is kept once. A track's three files are written when it has at least one row. `derived/` is a
  dataset root for the seed tracks (`slm-swap eval --dataset-root .../derived`).
- `tasks/{train,val,test}.jsonl`: every task of every trajectory read (accepted or not) in its split, in
  the tasks-file format (`tasks.read_tasks`): the student is evaluated on the test tasks.
- `filter_report.json`: the filter's counts and every verdict.
- `manifest.json`: sha256 and row count of every file above, rows per track and split, skip reasons
  with counts, and each row's source trace id (in row order).

Splits: a task built from a committed split row (`task.source` = `.../<split>.jsonl:<line>`) keeps that
split, so a seed test row never becomes training data; every other task goes by the sha256 of its
task id (`SplitFractions`, 0.8/0.1/0.1). A task is in one split only (the same task from two sources
goes to the more held-out one), and where a row goes never depends on other tasks' rows. Rows are
ordered by (task id, trajectory id), not by input order.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json, atomic_write_jsonl
from ray_app.codeact.records import CodeactTask, Trajectory
from ray_app.codeact.trajectory_filter import FilterReport, FilterVerdict
from ray_app.codeact.trajectory_trace_file import TracedTrajectory
from ray_app.data.rows import SPLITS, TRACKS, Row, row_problem
from ray_app.json_text import readable_json, strict_json_loads
from ray_app.models.fingerprint import file_sha256
from ray_app.prompts import (
    PromptFormatError,
    ToolCallFormatError,
    format_tool_call,
    structured_prompt_from_instruction,
    tool_signature,
    toolcall_prompt,
)

CODEACT_TRACK = "codeact"


def tasks_file(split: str) -> str:
    """The split's tasks (`tasks.read_tasks` reads them): every task of every trajectory read."""
    return f"tasks/{split}.jsonl"


def split_file(track: str, split: str) -> str:
    """Where a track's split goes under the output folder: CodeAct rows at the top, seed-track rows
    derived from the same trajectories under `derived/<track>/`."""
    return f"{split}.jsonl" if track == CODEACT_TRACK else f"derived/{track}/{split}.jsonl"


MANIFEST_FILE = "manifest.json"
FILTER_REPORT_FILE = "filter_report.json"
MANIFEST_VERSION = 1
TASK_SPLIT_SALT = "slm-swap/codeact-split/v1\n"
SEED_SPLIT_SOURCE = re.compile(r"(?:^|/)(train|val|test)\.jsonl:\d+$")
CHAT_ROLES = ("system", "user", "assistant")
HELD_OUT_FIRST = ("test", "val", "train")


class SkipRow(Exception):
    """This trajectory gives no row of a track; the message is the reason counted in the manifest."""


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if any(value < 0 for value in values) or abs(sum(values) - 1) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and add up to 1, got {values}")


@dataclass(frozen=True)
class Manifest:
    source: str
    files: dict[str, dict[str, Any]]  # relative path -> {"sha256", "rows"}
    counts: dict[str, dict[str, int]]  # track -> split -> rows
    trajectories: dict[str, int]  # read, accepted, rejected, recovered
    skipped: dict[str, int]  # reason -> count
    row_sources: dict[str, list[str]]  # relative path -> source trace id of each row, in row order
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": MANIFEST_VERSION, **asdict(self)}


def task_split(task: CodeactTask, fractions: SplitFractions = SplitFractions()) -> str:
    """The task's split: its seed split when it was built from one, else by the hash of its task id."""
    seed_split = SEED_SPLIT_SOURCE.search(task.source)
    if seed_split:
        return seed_split.group(1)
    digest = hashlib.sha256((TASK_SPLIT_SALT + task.task_id).encode("utf-8")).hexdigest()
    position = int(digest[:16], 16) / 16**16  # uniform in [0, 1)
    if position < fractions.train:
        return "train"
    return "val" if position < fractions.train + fractions.val else "test"


def task_splits(tasks: list[CodeactTask], fractions: SplitFractions = SplitFractions()) -> dict[str, str]:
    """Task id -> split. One task can come from two sources (a seed request in two files): it goes to the
    most held-out split any of them gives (test, then val, then train), so no task is in two splits."""
    chosen: dict[str, str] = {}
    for task in tasks:
        split = task_split(task, fractions)
        current = chosen.get(task.task_id)
        if current is None or HELD_OUT_FIRST.index(split) < HELD_OUT_FIRST.index(current):
            chosen[task.task_id] = split
    return chosen


def codeact_messages(trajectory: Trajectory) -> list[dict[str, Any]]:
    messages = []
    for index, message in enumerate(trajectory.messages):
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise SkipRow(f"message {index} is not a chat turn (role {role!r}, content {type(content).__name__})")
        turn: dict[str, Any] = {"role": role, "content": content}
        if message.get("observation"):
            if role == "assistant":
                raise SkipRow(f"message {index} is an assistant turn marked as an observation")
            turn["observation"] = True
        messages.append(turn)
    if not any(turn["role"] == "assistant" for turn in messages):
        raise SkipRow("no assistant turn")
    return messages


def codeact_row(traced: TracedTrajectory, verdict: FilterVerdict) -> dict[str, Any]:
    trajectory = traced.trajectory
    return {
        "trajectory_id": trajectory.trajectory_id,
        "task_id": trajectory.task.task_id,
        "kind": trajectory.task.kind,
        "model": trajectory.model,
        "source_trace_id": traced.trace_id,
        "recovered": verdict.recovered,
        "messages": codeact_messages(trajectory),
    }


def toolcall_row(trajectory: Trajectory) -> Row:
    accepted = [call for call in trajectory.tool_calls if call.error is None]
    if not accepted:
        raise SkipRow("no tool call accepted by the stub")
    call = accepted[-1]
    task = trajectory.task
    try:
        signatures = [
            tool_signature({"name": t.name, "description": t.description, "parameters": t.parameters})
            for t in task.tools
        ]
        return Row(toolcall_prompt(signatures, task.request), format_tool_call(call.name, call.arguments))
    except (PromptFormatError, ToolCallFormatError) as error:
        raise SkipRow(f"cannot build the row: {error}") from None


def structured_row(trajectory: Trajectory) -> Row:
    answer = trajectory.final_answer
    if isinstance(answer, str):  # JSON text passed to final_answer, as the answer check reads it
        try:
            answer = strict_json_loads(answer.strip())
        except ValueError:
            raise SkipRow("final answer is not a JSON object or array") from None
    if not isinstance(answer, dict | list):
        raise SkipRow("final answer is not a JSON object or array")
    task = trajectory.task
    return Row(structured_prompt_from_instruction(task.instruction, task.request), readable_json(answer))


def seed_track_row(trajectory: Trajectory) -> Row:
    track = trajectory.task.track
    row = toolcall_row(trajectory) if track == "toolcall" else structured_row(trajectory)
    problem = row_problem(row.to_json(), track)
    if problem:
        raise SkipRow(f"row does not validate: {problem}")
    return row


def build_trajectory_datasets(
    traced: list[TracedTrajectory],
    report: FilterReport,
    out_dir: Path,
    fractions: SplitFractions = SplitFractions(),
    source: str = "",
    skipped_while_reading: Mapping[str, int] | None = None,
) -> Manifest:
    """Write the files of the module docstring for the accepted trajectories; return the manifest."""
    skipped: Counter = Counter(skipped_while_reading or {})
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        track: {s: [] for s in SPLITS} for track in (CODEACT_TRACK, *TRACKS)
    }
    sources: dict[str, dict[str, list[str]]] = {track: {s: [] for s in SPLITS} for track in rows}
    seen_prompts: dict[str, set[str]] = {track: set() for track in TRACKS}
    ordered = sorted(traced, key=lambda t: (t.trajectory.task.task_id, t.trajectory.trajectory_id))
    split_of_task = task_splits([item.trajectory.task for item in ordered], fractions)
    for item in ordered:
        trajectory = item.trajectory
        verdict = report.verdicts[trajectory.trajectory_id]
        if not verdict.accepted:
            skipped[f"rejected: {verdict.reason}"] += 1
            continue
        split = split_of_task[trajectory.task.task_id]
        try:
            rows[CODEACT_TRACK][split].append(codeact_row(item, verdict))
        except SkipRow as reason:
            skipped[f"{CODEACT_TRACK}: {reason}"] += 1
            continue
        sources[CODEACT_TRACK][split].append(item.trace_id)
        track = trajectory.task.track
        try:
            row = seed_track_row(trajectory)
        except SkipRow as reason:
            skipped[f"{track}: {reason}"] += 1
            continue
        if row.prompt in seen_prompts[track]:
            skipped[f"{track}: duplicate prompt"] += 1
            continue
        seen_prompts[track].add(row.prompt)
        rows[track][split].append(row.to_json())
        sources[track][split].append(item.trace_id)

    files: dict[str, dict[str, Any]] = {}
    row_sources: dict[str, list[str]] = {}
    for track, splits in rows.items():
        if not any(splits.values()):
            continue
        for split in SPLITS:
            relative = split_file(track, split)
            path = atomic_write_jsonl(out_dir / relative, splits[split])
            files[relative] = {"sha256": file_sha256(path), "rows": len(splits[split])}
            row_sources[relative] = sources[track][split]
    # Every task of every trajectory read (accepted or not), by split: what the student is evaluated on.
    tasks_by_split: dict[str, dict[str, Any]] = {split: {} for split in SPLITS}
    for item in ordered:
        task = item.trajectory.task
        tasks_by_split[split_of_task[task.task_id]].setdefault(task.task_id, task.to_json())
    for split in SPLITS:
        relative = tasks_file(split)
        path = atomic_write_jsonl(out_dir / relative, list(tasks_by_split[split].values()))
        files[relative] = {"sha256": file_sha256(path), "rows": len(tasks_by_split[split])}
    atomic_write_json(out_dir / FILTER_REPORT_FILE, report.to_json())
    files[FILTER_REPORT_FILE] = {"sha256": file_sha256(out_dir / FILTER_REPORT_FILE), "rows": len(report.verdicts)}
    manifest = Manifest(
        source=source,
        files=files,
        counts={track: {split: len(splits[split]) for split in SPLITS} for track, splits in rows.items()},
        trajectories={
            "read": len(traced),
            "accepted": sum(report.verdicts[t.trajectory.trajectory_id].accepted for t in traced),
            "rejected": sum(not report.verdicts[t.trajectory.trajectory_id].accepted for t in traced),
            "recovered": sum(report.verdicts[t.trajectory.trajectory_id].recovered for t in traced),
        },
        skipped=dict(sorted(skipped.items())),
        row_sources=row_sources,
        settings={
            "filter": asdict(report.settings),
            "split_fractions": asdict(fractions),
            "split_salt": TASK_SPLIT_SALT.strip(),
        },
    )
    atomic_write_json(out_dir / MANIFEST_FILE, manifest.to_json())
    return manifest
