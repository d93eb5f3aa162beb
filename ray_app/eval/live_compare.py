"""Live compare: teacher and SLM answer the same rows side by side while you watch.

The interactive view of an evaluation, run **in this process** (no Ray, no Ray Data): the teacher
(hosted, or replayed from recorded traces) answers chunks of rows on a background thread while the
SLM answers fixed batches on the main thread; every finished chunk or batch updates a rich table
(rows done, running core rates, the latest mismatch) or, when stdout is not a terminal, prints one
plain line. `slm-swap eval` is the batch path (Ray Data actor pool, resumable); both use the same
engines, prediction records, fixed batches, scoring and run keys.

Writes a trace for the run (`mode=live` in its metadata; Langfuse with LANGFUSE_* keys, else
`<eval_root>/traces/<run>.json`) and, with `save`, `<eval_root>/<track>/<label>/{predictions.jsonl,
timings.jsonl,metrics.json}` for the teacher and the SLM, in `slm-swap eval`'s format.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live

from ray_app.data.rows import Row, Track, read_split
from ray_app.engines.base import EngineRequest
from ray_app.eval.config import EvalConfig, SlmEvalSettings, TeacherEvalSettings
from ray_app.eval.evaluate import build_teacher_engine, run_key_of, teacher_identity
from ray_app.eval.live_board import LiveBoard, SideTally
from ray_app.eval.live_save import save_side
from ray_app.eval.ray_predictor import fixed_groups, prediction_record
from ray_app.eval.run_facts import jsonable
from ray_app.eval.slm_plan import slm_choices, slm_plan
from ray_app.models.fingerprint import file_sha256
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, project_relative

console = Console(stderr=True)


@dataclass(frozen=True)
class LiveCompareConfig:
    track: Track
    split: str = "test"
    rows_file: Path | None = None  # rows to compare on instead of <dataset_root>/<track>/<split>.jsonl
    limit: int | None = None  # only the first N rows
    dataset_root: Path = DATASET_ROOT
    eval_root: Path = EVAL_ROOT  # --save writes <eval_root>/<track>/<label>/; local traces <eval_root>/traces/
    seed: int = 42
    slm: SlmEvalSettings = field(default_factory=SlmEvalSettings)
    teacher: TeacherEvalSettings = field(default_factory=TeacherEvalSettings)
    save: bool = False
    require_langfuse: bool | None = None  # None: SLM_SWAP_REQUIRE_LANGFUSE

    @property
    def rows_path(self) -> Path:
        return self.rows_file if self.rows_file is not None else self.dataset_root / self.track / f"{self.split}.jsonl"

    @property
    def split_name(self) -> str:
        """What metrics.json calls the rows: the split's name, or the rows file's path."""
        return self.split if self.rows_file is None else project_relative(self.rows_file)

    def eval_config(self, model: str) -> EvalConfig:
        """The `slm-swap eval` config of one side (its label, output folder and SLM plan)."""
        return EvalConfig(
            track=self.track,
            model=model,  # type: ignore[arg-type]
            split=self.split_name,
            dataset_root=self.dataset_root,
            eval_root=self.eval_root,
            seed=self.seed,
            slm=self.slm,
            teacher=self.teacher,
            require_langfuse=self.require_langfuse,
        )


@dataclass(frozen=True)
class LiveOutcome:
    metrics: dict[str, dict[str, float | int]]  # by label: score_rows of every row
    saved: dict[str, Path]  # by label: metrics.json, with save
    trace_location: str


def read_rows(config: LiveCompareConfig) -> list[Row]:
    rows = read_split(config.rows_path, config.track)
    return rows[: config.limit] if config.limit is not None else rows


class TeacherThread(threading.Thread):
    """Answers every row in chunks in the background; a failure is kept in `error` for the main thread."""

    def __init__(self, engine, track: Track, rows: list[Row], chunk: int, board: LiveBoard, label: str) -> None:
        super().__init__(name="live-compare-teacher", daemon=True)
        self.engine, self.track, self.rows, self.chunk = engine, track, rows, chunk
        self.board, self.label = board, label
        self.stop_requested = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.rows), self.chunk):
                if self.stop_requested.is_set():
                    return
                indices = list(range(start, min(start + self.chunk, len(self.rows))))
                started = time.perf_counter()
                generations = self.engine.generate([EngineRequest(i, self.track, self.rows[i].prompt) for i in indices])
                records = [prediction_record(i, self.rows[i], g) for i, g in zip(indices, generations, strict=True)]
                self.board.record_batch(self.label, records, time.perf_counter() - started)
        except BaseException as error:  # re-raised on the main thread, which stops the SLM
            self.error = error


def answer_side_by_side(
    slm_engine, teacher: TeacherThread, rows: list[Row], track: Track, group_size: int, board: LiveBoard, label: str
) -> None:
    """The teacher on its thread, the SLM's fixed groups here (as `slm-swap eval`'s actors answer them);
    stop at the first failure of either."""
    teacher.start()
    try:
        for batch in fixed_groups(rows, group_size):
            if teacher.error is not None:
                break
            started = time.perf_counter()
            generations = slm_engine.generate([EngineRequest(i, track, rows[i].prompt) for i in batch])
            records = [prediction_record(i, rows[i], g) for i, g in zip(batch, generations, strict=True)]
            board.record_batch(label, records, time.perf_counter() - started)
    finally:
        teacher.stop_requested.set()
        teacher.join()
    if teacher.error is not None:
        raise teacher.error


def run_live_compare(config: LiveCompareConfig, output: TextIO | None = None) -> LiveOutcome:
    """Teacher vs SLM on the same rows, shown live; with `config.save`, write both sides' eval files."""
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.tracing import start_run_trace

    output = output or sys.stdout
    all_rows = read_split(config.rows_path, config.track)
    rows = all_rows[: config.limit] if config.limit is not None else all_rows
    split_identity: dict[str, Any] = {
        "track": config.track,
        "split": config.split_name,
        "split_sha256": file_sha256(config.rows_path),
    }
    if len(rows) < len(all_rows):
        split_identity["limit"] = len(rows)  # a prefix of the file: not the rows the whole split's run key names
    teacher_config, slm_config = config.eval_config("teacher"), config.eval_config("slm")
    teacher_engine = build_teacher_engine(teacher_config)
    if teacher_engine.kind == "replay":  # before loading the SLM: ReplayMissingError names the first unrecorded row
        teacher_engine.generate([EngineRequest(i, config.track, row.prompt) for i, row in enumerate(rows)])
    import torch

    # the SLM runs in this process: plan it for this machine, never for a Ray cluster RAY_ADDRESS names
    plan = slm_plan(slm_config, torch.cuda.device_count(), float(os.cpu_count() or 1))
    settings, slm_identity = plan.settings, plan.identity
    identities = {"teacher": teacher_identity(teacher_engine, teacher_config), "slm": slm_identity}
    run_keys = {side: run_key_of({**split_identity, **identity}) for side, identity in identities.items()}
    labels = {"teacher": teacher_config.model_label, "slm": slm_config.model_label}
    with console.status(f"loading the SLM {settings.model_path.name} ({settings.precision}, {settings.device})"):
        slm_engine = SlmEngine(settings)

    plain = not output.isatty()
    tallies = [SideTally(labels[side], config.track, len(rows)) for side in ("teacher", "slm")]
    board = LiveBoard(config.track, tallies, plain_output=output if plain else None)
    with start_run_trace(
        name=f"live {config.track}",
        kind="eval",
        local_dir=config.eval_root / "traces",
        input={
            "rows_file": project_relative(config.rows_path),
            "rows": len(rows),
            "identity": identities,
            "config": jsonable(config),
        },
        metadata={"mode": "live", "track": config.track, "labels": list(labels.values()), "run_keys": run_keys},
        require_langfuse=config.require_langfuse,
    ) as trace:
        chunk = max(1, config.teacher.concurrency) * 2  # as `slm-swap eval` sends the teacher its rows
        teacher = TeacherThread(teacher_engine, config.track, rows, chunk, board, labels["teacher"])
        live = nullcontext() if plain else Live(board, console=Console(file=output), refresh_per_second=4)
        with trace.span("generate", input={"rows": len(rows), "labels": list(labels.values())}) as span, live:
            answer_side_by_side(slm_engine, teacher, rows, config.track, plan.rows_per_task, board, labels["slm"])
            span.update(output={label: tally.done for label, tally in board.tallies.items()})
        metrics = {label: tally.metrics for label, tally in board.tallies.items()}
        saved: dict[str, Path] = {}
        if config.save:
            descriptions = {
                "teacher": teacher_engine.describe(),
                # eval's SLM description, with no Ray actors: the live compare generates in this process
                "slm": {
                    **settings.to_json(),
                    **slm_engine.describe(),
                    **slm_choices(slm_config, plan),
                    "actors": None,
                    "runner": "live compare",
                },
            }
            for side, side_config in (("teacher", teacher_config), ("slm", slm_config)):
                tally = board.tallies[labels[side]]
                saved[labels[side]] = save_side(
                    side_config.output_dir,
                    track=config.track,
                    label=labels[side],
                    split=config.split_name,
                    records_by_index=tally.records,
                    expected_rows=len(rows),
                    elapsed_s=tally.elapsed_s,
                    engine_description=descriptions[side],
                    is_teacher=side == "teacher",
                    run_key=run_keys[side],
                    identity=identities[side],
                    config=config,
                )
        trace.end(
            output={"metrics": metrics, "saved": {label: project_relative(path) for label, path in saved.items()}}
        )
    for tally in board.tallies.values():
        output.write(f"final {tally.line()}\n")
    for label, path in saved.items():
        console.print(f"live {config.track}/{label}: saved → {project_relative(path.parent)}", highlight=False)
    return LiveOutcome(metrics=metrics, saved=saved, trace_location=trace.location)
