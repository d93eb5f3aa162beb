"""`slm-swap pipeline` (the main job), `slm-swap submit` (it, on a Ray cluster) and `slm-swap report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ray_app.cli.typer_app import (
    app,
    console,
    fail,
)
from ray_app.paths import DATASET_ROOT


@app.command(
    "pipeline",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def pipeline(context: typer.Context) -> None:
    """The main job: data → evaluate → decide → train → evaluate adapters → decide again → report (`--help`)."""
    from ray_app.pipeline.arguments import main as pipeline_main

    pipeline_main(list(context.args))


@app.command(
    "submit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def submit(
    entrypoint: Annotated[list[str], typer.Argument(help="the job's command, after --: python jobs/pipeline.py ...")],
    runtime_env: Annotated[
        Path, typer.Option(help="Ray runtime env YAML; the shell's AZURE_*, LANGFUSE_*, SLM_SWAP_TEACHER_* are added")
    ] = Path("runtime_env.yaml"),
    address: Annotated[
        str | None, typer.Option(help="Ray dashboard, e.g. http://127.0.0.1:8265 (default $RAY_ADDRESS)")
    ] = None,
    submission_id: Annotated[str | None, typer.Option(help="the job's id (default: Ray's)")] = None,
    wait: Annotated[bool, typer.Option(help="follow the job's logs until it ends; exit 1 when it fails")] = True,
) -> None:
    """Submit a job to the Ray cluster with runtime_env.yaml and this shell's secrets (never written to disk)."""
    from ray_app.cluster_submit import SubmitError, job_runtime_env, submit_job

    try:
        job_env = job_runtime_env(runtime_env)
        names = ", ".join(job_env.secret_names) or "none set"
        console.print(f"runtime env: {runtime_env} + from this shell: {names} (values not shown)", highlight=False)
        code = submit_job(
            entrypoint,
            job_env,
            address,
            submission_id,
            wait,
            say=lambda text: console.print(text, highlight=False, soft_wrap=True),
        )
    except SubmitError as error:
        fail(str(error))
    raise typer.Exit(code)


@app.command("report")
def report(
    eval_root: Annotated[Path | None, typer.Option(help="holds decision.json and <track>/<label>/ results")] = None,
    dataset_root: Annotated[Path, typer.Option(help="holds <track>/test.jsonl (gold rows)")] = DATASET_ROOT,
    failing_rows: Annotated[int, typer.Option(min=0, help="first failing test rows shown per model")] = 3,
    report_format: Annotated[
        Literal["md", "html", "both"],
        typer.Option("--format", help="md: report.md; html: report.html, one self-contained page; both"),
    ] = "md",
) -> None:
    """Write <eval-root>/report.md (or report.html) and its PNG charts from decision.json and the metrics files."""
    from ray_app.paths import EVAL_ROOT
    from ray_app.report import ReportError, write_report

    formats = ("md", "html") if report_format == "both" else (report_format,)
    try:
        written = write_report(
            eval_root or EVAL_ROOT, dataset_root, failing_rows_per_model=failing_rows, formats=formats
        )
    except ReportError as error:
        fail(str(error))
    files = dict.fromkeys([written.report_path, written.html_path or written.report_path])  # md and/or html
    console.print(f"report: {', '.join(map(str, files))} ({len(written.chart_paths)} charts)", highlight=False)
