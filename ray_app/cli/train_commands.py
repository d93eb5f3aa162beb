"""`slm-swap train`: the adapters, then (unless `--no-eval-after`) the evaluation and decide steps
composed after it, as the main job composes them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ray_app.cli.typer_app import (
    app,
    bounded,
    console,
    evaluate_or_exit,
    fail,
    interrupted,
)
from ray_app.decide.decide_config import DecideConfig
from ray_app.engines.precision import Precision
from ray_app.eval.config import SlmEvalSettings
from ray_app.paths import DATASET_ROOT
from ray_app.train.config import Backend, LossOn, Quantization, TrainConfig, TrainStrategy


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
    from ray_app.cli.decide_commands import decide_and_print  # registered after train, as --help lists them

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
