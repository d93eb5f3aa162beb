"""`slm-swap` command line: thin wrappers that parse flags and call one step's entry function.

One module per group of commands; importing them registers their commands on `app`, in the order
`slm-swap --help` lists them.
"""

from __future__ import annotations

import signal
import sys

# isort: off
from ray_app.cli import (  # noqa: F401  (registers the commands, in this order)
    data_commands,
    eval_commands,
    train_commands,
    decide_commands,
    pipeline_commands,
    serve_commands,
    models_commands,
)

# isort: on
from ray_app.cli.typer_app import app, console

__all__ = ["app", "main"]


def main() -> None:
    """Runs the command line; the `slm-swap` command reaches it through ray_app/__main__.py, which chose
    the allocator first."""
    from ray_app.ray_runtime import DashboardSettingError, LeftoverRayError

    # Ctrl-C (or kill -INT) stops any command with its "Interrupted. Kept: ..." message, also where it
    # started with SIGINT ignored, as `cmd &` in a script starts it: Python then leaves SIGINT ignored and
    # a long command would run on to its end and exit 0 (as the pipeline's entry point and serve do).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except (LeftoverRayError, DashboardSettingError) as error:  # any command that starts Ray, refused
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
