"""`slm-swap score` and `slm-swap eval` (one model on one track; the CodeAct loop for `--track codeact`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ray_app.cli.typer_app import (
    AdapterWeightsOption,
    CpuLinearOption,
    DecodeAttentionOption,
    PrecisionOption,
    app,
    bounded,
    evaluate_or_exit,
    fail,
    interrupted,
)
from ray_app.codeact.loop import LoopSettings
from ray_app.engines.teacher_settings import ToolcallMode
from ray_app.eval.codeact_eval import CodeactEvalConfig
from ray_app.eval.config import Decoding, EvalConfig, ModelSide, SlmEvalSettings, TeacherEvalSettings
from ray_app.paths import DATASET_ROOT


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
    precision: PrecisionOption = SlmEvalSettings.precision,
    adapter_weights: AdapterWeightsOption = SlmEvalSettings.adapter_weights,
    cpu_linear: CpuLinearOption = SlmEvalSettings.cpu_linear,
    decode_attention: DecodeAttentionOption = SlmEvalSettings.decode_attention,
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
