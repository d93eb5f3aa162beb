"""Command-line flags of the main job, one per PipelineConfig field (`--max-train-rows 40`, `--no-train`).

Used by `jobs/pipeline.py` and `slm-swap pipeline`, so both accept exactly the same flags; a flag
that is not given leaves the config file's value, or the default, in place.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields
from pathlib import Path

from rich.console import Console

from ray_app.pipeline.config import PipelineConfig, PipelineConfigError, build_config
from ray_app.settings import choices, describe, field_types, unwrap

console = Console(stderr=True)


class BoolFlag(argparse.Action):
    """`--train`, `--train true|false`, `--no-train`; the word is parsed with the other flags (`ray_app.settings`)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        negatives = ["--no-" + option[2:] for option in option_strings]
        super().__init__(
            [*option_strings, *negatives], dest, nargs="?", default=default, help=help, metavar="true|false"
        )

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value (use {option_string.replace('--no-', '--', 1)} {value})")
            value = False
        setattr(namespace, self.dest, True if value is None else value)


class HelpFormatter(argparse.HelpFormatter):
    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):  # "--train [true|false], --no-train": the negative takes no value
            positive, negative = action.option_strings
            return f"{positive} [true|false], {negative}"
        return super()._format_action_invocation(action)


def is_bool(annotation) -> bool:
    return unwrap(annotation)[0] in (bool, bool | None)


def pipeline_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-swap pipeline",
        description="The main job: data → evaluate → decide → train → evaluate adapters → decide again → report.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="JSON or YAML file of settings (keys are the flag names with _)")
    types = field_types(PipelineConfig)
    for item in fields(PipelineConfig):
        flag, annotation = "--" + item.name.replace("_", "-"), types[item.name]
        help_text = f"{describe(annotation, null=False)}; default {item.default}"
        if is_bool(annotation):  # not given: the config file's value, or the default (None: auto)
            parser.add_argument(flag, dest=item.name, action=BoolFlag, default=None, help=help_text)
            continue
        # Values stay text here; build_config parses each to its field's type and names the flag when it cannot.
        parser.add_argument(flag, dest=item.name, choices=choices(annotation), default=None, help=help_text)
    return parser


def config_from_argv(argv: list[str]) -> PipelineConfig:
    arguments = vars(pipeline_parser().parse_args(argv))
    config_file = arguments.pop("config")
    try:
        return build_config(config_file, arguments)
    except PipelineConfigError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    from ray_app.pipeline.run import PipelineError, interrupted_message, run_pipeline
    from ray_app.ray_runtime import DashboardSettingError, LeftoverRayError, quiet_half_built_ray_objects_at_exit

    config = config_from_argv(sys.argv[1:] if argv is None else argv)
    # Ctrl-C (or kill -INT) stops the job even where it started with SIGINT ignored, as `cmd &` in a
    # script starts it: Python then leaves SIGINT ignored and the job would run on to its end.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_pipeline(config)
    except (PipelineError, LeftoverRayError, DashboardSettingError) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: what was done stays, a re-run resumes; no traceback
        quiet_half_built_ray_objects_at_exit()
        console.print(f"\n[yellow]{interrupted_message(config)}[/yellow]", highlight=False, soft_wrap=True)
        sys.exit(130)  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
