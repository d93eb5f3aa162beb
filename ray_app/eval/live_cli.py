"""Command lines of `slm_swap/live_compare.py` and `slm_swap/run_first_tests.py`: flags → config → run.

The SLM and teacher flags are `slm-swap eval`'s, with the same defaults, except that the first
tests default to the demo SLM (when SLM_MODEL_PATH is unset) and to 96 new tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ray_app.data.rows import TRACKS
from ray_app.engines.precision import PRECISIONS
from ray_app.eval.config import SlmEvalSettings, TeacherEvalSettings
from ray_app.paths import DATASET_ROOT, EVAL_ROOT

TEACHER_MODES = ("auto", "azure", "openai-compatible", "replay")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_slm_flags(parser: argparse.ArgumentParser, max_new_tokens: int, model_path_help: str) -> None:
    group = parser.add_argument_group("SLM")
    group.add_argument("--model-path", help=model_path_help)
    group.add_argument("--adapter", type=Path, help="PEFT adapter folder for the SLM")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (on a GPU bf16 when the weights take at most half its memory, else 8bit; "
        "on CPU bf16 where native, else fp32)",
    )
    group.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens)
    group.add_argument("--batch-size", type=positive_int, default=SlmEvalSettings().batch_size)


def add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    defaults = TeacherEvalSettings()
    group = parser.add_argument_group("teacher")
    group.add_argument(
        "--teacher-mode",
        choices=TEACHER_MODES,
        default="auto",
        help="auto: azure with AZURE_ENDPOINT, openai-compatible with SLM_SWAP_TEACHER_BASE_URL, else replay",
    )
    group.add_argument("--replay-traces", type=Path, default=defaults.replay_traces, help="trace JSONL for replay")
    group.add_argument("--agent-id", default=defaults.replay_agent_id, help="agent whose recorded answers are replayed")
    group.add_argument("--toolcall-mode", choices=("native", "prompt"), default=defaults.toolcall_mode)
    group.add_argument("--concurrency", type=positive_int, default=defaults.concurrency, help="parallel teacher calls")


def add_run_flags(parser: argparse.ArgumentParser, eval_root: Path) -> None:
    parser.add_argument("--save", action="store_true", help="write predictions/timings/metrics as `slm-swap eval`")
    parser.add_argument(
        "--eval-root", type=Path, default=eval_root, help=f"--save and local traces (default {eval_root})"
    )
    parser.add_argument("--dataset-root", type=Path, default=DATASET_ROOT, help="holds <track>/<split>.jsonl")
    parser.add_argument("--require-langfuse", action="store_true", help="fail when LANGFUSE_* keys are missing")


def slm_settings(args: argparse.Namespace, model_path: str | None) -> SlmEvalSettings:
    return SlmEvalSettings(
        model_path=model_path,
        adapter_path=args.adapter,
        precision=args.precision,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )


def teacher_settings(args: argparse.Namespace) -> TeacherEvalSettings:
    return TeacherEvalSettings(
        mode=args.teacher_mode,
        replay_traces=args.replay_traces,
        replay_agent_id=args.agent_id,
        toolcall_mode=args.toolcall_mode,
        concurrency=args.concurrency,
    )


def run_reporting_errors(step) -> int:
    """Run `step()`; a configuration or data error becomes `error: ...` on stderr and exit status 2."""
    from ray_app.eval.evaluate import eval_input_errors
    from ray_app.eval.live_first_tests import NothingToSampleError

    try:
        step()
    except (*eval_input_errors(), NothingToSampleError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    return 0


def live_compare_main(argv: list[str] | None = None) -> int:
    from ray_app.eval.live_compare import LiveCompareConfig, run_live_compare

    parser = argparse.ArgumentParser(
        description="Teacher vs SLM on the same rows, side by side, live (in-process; `slm-swap eval` is the "
        "Ray Data batch path)."
    )
    parser.add_argument("--track", required=True, choices=TRACKS)
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--split", default="test", help="split file name under <dataset-root>/<track>/")
    rows.add_argument("--rows-file", type=Path, help="a JSONL file of rows of the track instead of a split")
    parser.add_argument("--limit", type=positive_int, help="only the first N rows")
    add_slm_flags(parser, SlmEvalSettings().max_new_tokens, "SLM checkpoint (default $SLM_MODEL_PATH)")
    add_teacher_flags(parser)
    add_run_flags(parser, EVAL_ROOT)
    args = parser.parse_args(argv)
    config = LiveCompareConfig(
        track=args.track,
        split=args.split,
        rows_file=args.rows_file,
        limit=args.limit,
        dataset_root=args.dataset_root,
        eval_root=args.eval_root,
        slm=slm_settings(args, args.model_path),
        teacher=teacher_settings(args),
        save=args.save,
        require_langfuse=True if args.require_langfuse else None,
    )
    return run_reporting_errors(lambda: run_live_compare(config))


def first_tests_main(argv: list[str] | None = None) -> int:
    from ray_app.eval.live_first_tests import FIRST_TESTS_ROOT, FirstTestsConfig, run_first_tests
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR

    defaults = FirstTestsConfig()
    parser = argparse.ArgumentParser(
        description="Sample distinct prompts per track that the teacher can answer (seeded) and run the live "
        "compare on structured, then toolcall."
    )
    parser.add_argument("--rows", type=positive_int, default=defaults.rows, help="distinct prompts per track")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--split", default=defaults.split, help="the split to sample from")
    parser.add_argument("--sample-root", type=Path, default=FIRST_TESTS_ROOT, help="writes <track>.jsonl here")
    add_slm_flags(
        parser,
        defaults.slm.max_new_tokens,
        f"SLM checkpoint (default $SLM_MODEL_PATH, else the demo SLM {DEMO_MODEL_DIR})",
    )
    add_teacher_flags(parser)
    add_run_flags(parser, FIRST_TESTS_ROOT)
    args = parser.parse_args(argv)
    model_path = args.model_path or os.environ.get("SLM_MODEL_PATH") or str(DEMO_MODEL_DIR)
    config = FirstTestsConfig(
        rows=args.rows,
        seed=args.seed,
        split=args.split,
        dataset_root=args.dataset_root,
        sample_root=args.sample_root,
        eval_root=args.eval_root,
        slm=slm_settings(args, model_path),
        teacher=teacher_settings(args),
        save=args.save,
        require_langfuse=True if args.require_langfuse else None,
    )
    return run_reporting_errors(lambda: run_first_tests(config))
