"""`slm-swap data ...` (splits from xLAM, traces and trajectories; validation) and `slm-swap capture`
(the teacher as a CodeAct agent)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ray_app.cli.typer_app import (
    PrecisionOption,
    app,
    console,
    data_app,
    fail,
    interrupted,
)
from ray_app.codeact.capture import CaptureConfig, TeacherKind
from ray_app.codeact.loop import LoopSettings
from ray_app.data.splits import SplitSizes
from ray_app.paths import DATASET_ROOT

TrainSize = Annotated[int, typer.Option("--train", min=0, help="rows in train.jsonl per track")]
ValSize = Annotated[int, typer.Option("--val", min=0, help="rows in val.jsonl per track")]
TestSize = Annotated[int, typer.Option("--test", min=0, help="rows in test.jsonl per track")]


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
    train: TrainSize = SplitSizes.train,
    val: ValSize = SplitSizes.val,
    test: TestSize = SplitSizes.test,
) -> None:
    """xLAM function-calling rows with exactly one answer → both tracks' deterministic splits."""
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
    train: TrainSize = SplitSizes.train,
    val: ValSize = SplitSizes.val,
    test: TestSize = SplitSizes.test,
) -> None:
    """An agent's LLM generations (Langfuse, or an export file) → structured and toolcall splits."""
    from ray_app.data.langfuse_pull import (
        LangfuseSettingsError,
        langfuse_client_from_env,
        pull_observations,
        traces_from_observations,
    )
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


@data_app.command("trajectories")
def data_trajectories(
    out: Annotated[
        Path, typer.Option(help="writes <out>/{split}.jsonl, <out>/derived/{toolcall,structured}/, manifest.json")
    ] = DATASET_ROOT / "codeact",
    traces: Annotated[Path | None, typer.Option(help="trace JSONL (slm-swap capture's traces.jsonl)")] = None,
    from_langfuse: Annotated[bool, typer.Option(help="pull the trajectory traces from Langfuse instead")] = False,
    mastra_traces: Annotated[
        Path | None,
        typer.Option(help="a Mastra agent's traces (its Langfuse exporter's OTLP/JSON, or Langfuse's trace JSONL)"),
    ] = None,
    mastra_tools: Annotated[
        Path | None, typer.Option(help="the Mastra agent's OpenAI tools (JSON): the exporter sends no schemas")
    ] = None,
    since: Annotated[dt.datetime | None, typer.Option(help="pull only observations that start at/after this")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="pull only observations that start before this")] = None,
    replay: Annotated[bool, typer.Option(help="run passing trajectories' code again; same observations")] = False,
    token_budget: Annotated[int | None, typer.Option(min=1, help="default: FilterSettings.token_budget")] = None,
    score_langfuse: Annotated[
        bool | None, typer.Option(help="each verdict as a score on its Langfuse trace (default: with --from-langfuse)")
    ] = None,
) -> None:
    """CodeAct trajectory traces → filter verdicts → codeact/toolcall/structured splits and a manifest."""
    from ray_app.codeact.mastra_trajectories import mastra_trajectories, read_agent_traces, read_tool_definitions
    from ray_app.codeact.trajectory_dataset import build_trajectory_datasets, split_file
    from ray_app.codeact.trajectory_filter import REASONS, FilterSettings, filter_trajectories
    from ray_app.codeact.trajectory_trace_file import (
        TracedTrajectory,
        TrajectoryTraceFileError,
        TrajectoryTraces,
        read_trajectory_trace_file,
        trajectories_from_traces,
    )
    from ray_app.codeact.trajectory_writers import langfuse_writer_from_env, pull_trajectory_traces, record_filter_score
    from ray_app.data.langfuse_pull import LangfuseSettingsError, langfuse_client_from_env
    from ray_app.data.trace_splits import TraceFileError

    if traces is not None and from_langfuse:
        fail("give one of --traces FILE and --from-langfuse, not both")
    if traces is None and not from_langfuse and mastra_traces is None:
        fail("give --traces FILE, --from-langfuse or --mastra-traces FILE")
    writer = langfuse_writer_from_env() if (from_langfuse if score_langfuse is None else score_langfuse) else None
    if score_langfuse and writer is None:
        fail("--score-langfuse needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (and LANGFUSE_BASE_URL)")
    try:
        if traces is not None:
            read, source = read_trajectory_trace_file(traces), str(traces)
        elif from_langfuse:
            with console.status("pulling trajectory traces from Langfuse") as status:
                pulled = pull_trajectory_traces(
                    langfuse_client_from_env(), since, until, lambda page, n: status.update(f"page {page}: {n}")
                )
            read, source = trajectories_from_traces((f"langfuse:{t['id']}", t) for t in pulled), "langfuse"
        else:
            read, source = TrajectoryTraces(), ""
        if mastra_traces is not None:
            tools = read_tool_definitions(mastra_tools) if mastra_tools else None
            agent_traces = read_agent_traces(mastra_traces)
            runs = mastra_trajectories(agent_traces, tools)
            read.traces_read += len(agent_traces)
            read.traced.extend(
                TracedTrajectory(run, run.metadata["trace_id"], f"{mastra_traces}:{run.metadata['trace_id']}")
                for run in runs.trajectories
            )
            read.skipped.update({f"mastra: {reason}": count for reason, count in runs.skipped.items()})
            source = " + ".join(filter(None, [source, f"{mastra_traces} (Mastra agent)"]))
    except (TrajectoryTraceFileError, TraceFileError, LangfuseSettingsError, FileNotFoundError) as error:
        fail(str(error))
    settings = FilterSettings(token_budget=token_budget or FilterSettings().token_budget, replay=replay)
    report = filter_trajectories([item.trajectory for item in read.traced], settings)
    manifest = build_trajectory_datasets(read.traced, report, out, source=source, skipped_while_reading=read.skipped)
    console.print(f"{source}: {read.traces_read} traces, {len(read.traced)} trajectories", highlight=False)
    console.print(" ".join(f"{reason}={report.counts[reason]}" for reason in REASONS), highlight=False, soft_wrap=True)
    written = {
        track: counts for track, counts in manifest.counts.items() if split_file(track, "test") in manifest.files
    }
    if written:
        folders = {track: {"test": out / split_file(track, "test")} for track in written}
        print_split_table("trajectories → splits", written, folders)
    for reason, count in manifest.skipped.items():
        console.print(f"skipped {count}: {reason}", highlight=False)
    if writer is not None:
        for item in read.traced:
            record_filter_score(writer.client, item.trace_id, report.verdicts[item.trajectory.trajectory_id])
        writer.flush()
        console.print(f"{len(read.traced)} filter verdicts scored on their Langfuse traces", highlight=False)
    if not report.accepted_ids:
        fail("no trajectory was accepted; see the counts above", code=1)


@app.command("capture")
def capture(
    teacher: Annotated[
        TeacherKind,
        typer.Option(
            help="simulated (offline, scripted), hosted (AZURE_* / SLM_SWAP_TEACHER_*: "
            "also the project's Serve endpoint), or slm (the local SLM)"
        ),
    ] = CaptureConfig.teacher,
    out: Annotated[Path | None, typer.Option(help="default slm_swap/01_source/trajectories/<model>")] = None,
    tasks: Annotated[Path | None, typer.Option(help="tasks JSONL; default: built from --dataset-root")] = None,
    dataset_root: Annotated[Path, typer.Option(help="holds <track>/<split>.jsonl")] = DATASET_ROOT,
    split: Annotated[list[str] | None, typer.Option(help="splits to build tasks from (repeat; default all)")] = None,
    multistep: Annotated[
        int, typer.Option(min=0, help="generated multi-step tasks added")
    ] = CaptureConfig.multistep_tasks,
    max_tasks: Annotated[int | None, typer.Option(min=1, help="only the first N tasks")] = CaptureConfig.max_tasks,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Ray actors, each with its own engine")
    ] = CaptureConfig.concurrency,
    trajectories_per_call: Annotated[
        int, typer.Option(min=1, help="trajectories an actor steps together")
    ] = CaptureConfig.trajectories_per_call,
    max_steps: Annotated[int, typer.Option(min=1, help="model turns per trajectory")] = LoopSettings.max_steps,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens per model turn")] = LoopSettings.max_new_tokens,
    model_path: Annotated[str | None, typer.Option(help="--teacher slm: checkpoint (default $SLM_MODEL_PATH)")] = None,
    adapter: Annotated[Path | None, typer.Option(help="--teacher slm: PEFT adapter folder")] = None,
    precision: PrecisionOption = CaptureConfig.precision,
    seed: Annotated[int, typer.Option(min=0, help="the simulated teacher's plan of mistakes")] = CaptureConfig.seed,
) -> None:
    """Run the teacher as a CodeAct agent over the tasks on Ray: one trace per trajectory (resumable)."""
    from ray_app.codeact.capture import CaptureInputError, run_capture
    from ray_app.codeact.tasks import TaskFileError
    from ray_app.engines.teacher_settings import TeacherConfigError
    from ray_app.models.model_path import ModelPathError

    config = CaptureConfig(
        teacher=teacher,
        out_dir=out,
        tasks_path=tasks,
        dataset_dir=dataset_root,
        splits=tuple(split) if split else CaptureConfig.splits,
        multistep_tasks=multistep,
        max_tasks=max_tasks,
        concurrency=concurrency,
        trajectories_per_call=trajectories_per_call,
        seed=seed,
        loop=LoopSettings(max_steps=max_steps, max_new_tokens=max_new_tokens),
        model_path=Path(model_path) if model_path else None,
        adapter_path=adapter,
        precision=precision,
    )
    try:
        outcome = run_capture(config)
    except (CaptureInputError, TaskFileError, TeacherConfigError, ModelPathError, FileNotFoundError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        interrupted("every finished group of trajectories, in the traces file")
    reasons = ", ".join(f"{reason} {count}" for reason, count in outcome.stop_reasons.items()) or "none new"
    console.print(
        f"{outcome.model}: {outcome.captured_now} trajectories captured now, {outcome.already_captured} already "
        f"there, of {outcome.tasks} tasks (ended: {reasons}); tasks left out: {outcome.tasks_skipped or 'none'}\n"
        f"traces: {outcome.traces_path}\n"
        f"next: slm-swap data trajectories --traces {outcome.traces_path} --out <folder>",
        highlight=False,
        soft_wrap=True,
    )
