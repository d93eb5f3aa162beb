"""Command-line flags of the main job, one per PipelineConfig field (`--max-train-rows 40`, `--no-train`).

Used by `jobs/pipeline.py` and `slm-swap pipeline`, so both accept exactly the same flags; a flag
that is not given leaves the config file's value, or the default, in place.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from pathlib import Path

from rich.console import Console

from ray_app.engines.precision import PRECISIONS
from ray_app.pipeline.config import PipelineConfig, PipelineConfigError, build_config

console = Console(stderr=True)
CHOICES = {
    "profile": ("auto", "demo", "full"),
    "data_source": ("xlam", "traces"),
    "teacher_mode": ("auto", "azure", "openai-compatible", "replay"),
    "slm_precision": PRECISIONS,
    "train_strategy": ("sequential", "parallel"),
    "phase": ("seed", "codeact", "all"),
    "codeact_teacher": ("auto", "simulated", "hosted"),
}


def flag_type(annotation: str):
    if "Path" in annotation:
        return Path
    if "int" in annotation:
        return int
    return str


def pipeline_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-swap pipeline",
        description="The main job: data → evaluate → decide → train → evaluate adapters → decide again → report.",
    )
    parser.add_argument("--config", type=Path, help="JSON or YAML file of settings (keys are the flag names with _)")
    hints = typing.get_type_hints(PipelineConfig)
    for item in fields(PipelineConfig):
        flag = "--" + item.name.replace("_", "-")
        if hints[item.name] in (bool, bool | None):  # --flag / --no-flag; not given: the default (None: auto)
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {item.default}")  # fmt: skip
            continue
        parser.add_argument(
            flag, dest=item.name, type=flag_type(str(item.type)), choices=CHOICES.get(item.name), default=None,
            help=f"default {item.default}",
        )  # fmt: skip
    return parser


def config_from_argv(argv: list[str]) -> PipelineConfig:
    arguments = vars(pipeline_parser().parse_args(argv))
    config_file = arguments.pop("config")
    try:
        return build_config(config_file, arguments)
    except PipelineConfigError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    from ray_app.pipeline.run import PipelineError, interrupted_message, run_pipeline

    config = config_from_argv(sys.argv[1:] if argv is None else argv)
    try:
        run_pipeline(config)
    except PipelineError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: what was done stays, a re-run resumes; no traceback
        console.print(f"\n[yellow]{interrupted_message(config)}[/yellow]", highlight=False, soft_wrap=True)
        sys.exit(130)  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
