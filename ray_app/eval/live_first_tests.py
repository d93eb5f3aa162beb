"""First tests: a seeded sample of prompts per track the teacher can answer, then the live compare.

For each track (structured, then toolcall): read the split (default test), keep the rows the teacher
in use can answer (the replay teacher only knows prompts it has a recording of; a hosted teacher
answers anything), draw `rows` distinct rows with `random.Random(seed)` (all of them when fewer are
answerable, said so), write them in split order to `<sample_root>/<track>.jsonl` (atomically, so
the run can be repeated on exactly these rows with `live_compare.py --rows-file`), and run the live
compare on them. With `save`, results go to `<eval_root>/<track>/<label>/` (default the sample
folder, so the full-split evaluations under 05_eval/ are never overwritten by a sample).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ray_app.atomic_files import atomic_write_jsonl
from ray_app.data.rows import TRACKS, Row, Track, read_split
from ray_app.eval.config import EvalConfig, SlmEvalSettings, TeacherEvalSettings
from ray_app.eval.evaluate import build_teacher_engine
from ray_app.eval.live_compare import LiveCompareConfig, LiveOutcome, run_live_compare
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, project_relative

FIRST_TESTS_ROOT = EVAL_ROOT / "first_tests"


class NothingToSampleError(ValueError):
    """No row of the split can be answered by the teacher in use."""


@dataclass(frozen=True)
class FirstTestsConfig:
    rows: int = 50  # distinct prompts per track
    seed: int = 42
    split: str = "test"
    dataset_root: Path = DATASET_ROOT
    sample_root: Path = FIRST_TESTS_ROOT  # <track>.jsonl: the sampled rows
    eval_root: Path = FIRST_TESTS_ROOT  # --save and local traces go here
    tracks: tuple[Track, ...] = TRACKS
    # 96 new tokens: every gold answer of the test splits fits (the longest is 89 tokens) and the
    # demo SLM on 2 CPU cores finishes a track in a few minutes.
    slm: SlmEvalSettings = field(default_factory=lambda: SlmEvalSettings(max_new_tokens=96))
    teacher: TeacherEvalSettings = field(default_factory=TeacherEvalSettings)
    save: bool = False
    require_langfuse: bool | None = None


def teacher_can_answer(engine, prompt: str) -> bool:
    """A replay teacher answers only recorded prompts; a hosted teacher answers any prompt."""
    return engine.kind != "replay" or prompt in engine.recordings.answers


def sample_indices(answerable: list[bool], count: int, seed: int) -> list[int]:
    """`count` distinct row indices among the answerable ones, seeded, in split order (all when fewer)."""
    pool = [index for index, ok in enumerate(answerable) if ok]
    if len(pool) <= count:
        return pool
    return sorted(random.Random(seed).sample(pool, count))


def write_sample(config: FirstTestsConfig, track: Track, teacher_engine, log: TextIO) -> Path:
    """Sample one track's rows, write them to `<sample_root>/<track>.jsonl`; say what was taken."""
    split_path = config.dataset_root / track / f"{config.split}.jsonl"
    rows: list[Row] = read_split(split_path, track)
    answerable = [teacher_can_answer(teacher_engine, row.prompt) for row in rows]
    if not any(answerable):
        raise NothingToSampleError(
            f"{split_path}: none of the {len(rows)} rows has a recorded answer in the replay traces "
            f"{teacher_engine.trace_path} (agent {teacher_engine.agent_id!r}); regenerate them "
            "(python slm_swap/dummy_agent_workflow.py --out-json storage/dummy_langfuse_traces.jsonl) or use a "
            "hosted teacher"
        )
    indices = sample_indices(answerable, config.rows, config.seed)
    path = atomic_write_jsonl(config.sample_root / f"{track}.jsonl", (rows[i].to_json() for i in indices))
    pool = sum(answerable)
    teacher = f"the {teacher_engine.kind} teacher"
    taken = (
        f"took all {len(indices)} (fewer than the {config.rows} asked for)"
        if len(indices) < config.rows
        else f"sampled {len(indices)} with seed {config.seed}"
    )
    log.write(
        f"{track}: {pool} of {len(rows)} {config.split} rows are answerable by {teacher}; {taken} "
        f"→ {project_relative(path)}\n"
    )
    log.flush()
    return path


def run_first_tests(config: FirstTestsConfig, output: TextIO | None = None) -> dict[Track, LiveOutcome]:
    """Sample every track first (so a missing recording fails before any model loads), then compare live."""
    output = output or sys.stdout
    teacher_engine = build_teacher_engine(EvalConfig(track=config.tracks[0], model="teacher", teacher=config.teacher))
    samples = {track: write_sample(config, track, teacher_engine, output) for track in config.tracks}
    outcomes = {}
    for track, sample_path in samples.items():
        outcomes[track] = run_live_compare(
            LiveCompareConfig(
                track=track,
                rows_file=sample_path,
                dataset_root=config.dataset_root,
                eval_root=config.eval_root,
                seed=config.seed,
                slm=config.slm,
                teacher=config.teacher,
                save=config.save,
                require_langfuse=config.require_langfuse,
            ),
            output=output,
        )
    return outcomes
