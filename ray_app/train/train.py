"""Train step: fine-tune one track's LoRA adapter on Ray Train.

1. the gate: train only when decision.json says FINE_TUNE=1 for the track (or `--force`);
2. read and validate train.jsonl and val.jsonl (a bad row or an empty split stops here); the codeact
   track (Phase II) has its own gate and data, pre-tokenized with loss masks (`codeact_track.py`);
3. the run key (data hashes, base model fingerprint, every training setting) names the Ray Train
   run, so a restarted run with the same inputs resumes from its last checkpoint and a changed
   setting starts afresh; a finished adapter with the same key is reused;
4. `TorchTrainer.fit()` runs `train_loop_per_worker` on the workers, or, on a single node without
   GPUs, in Ray Train's local mode in this process (`--workers` sets it; see `training_workers`);
5. the final adapter is copied into `04_ft/adapter_<track>/` (temp folder, then rename) with
   `training.json` beside it (config, loss curve, val loss, tokens/s, wall time, data hash, backend).
One trace covers the run (start/end, data paths, config, loss curve, adapter path). Evaluating the
SLM with the new adapter and deciding again are the next steps, composed by the pipeline
(`ray_app/pipeline/run.py`) and `slm-swap train` (`ray_app/cli/train_commands.py`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ray_app.atomic_files import atomic_write_json
from ray_app.data.rows import DatasetError, read_split
from ray_app.decide.decision_record import Decision
from ray_app.eval.evaluate import run_key_of
from ray_app.eval.run_facts import jsonable, run_facts
from ray_app.models.adapter_folder import is_adapter_folder, not_an_adapter_message
from ray_app.models.fingerprint import file_sha256, folder_fingerprint
from ray_app.models.model_path import resolve_slm_model_path
from ray_app.paths import project_relative
from ray_app.train.codeact_track import codeact_fine_tune_gate, codeact_worker_data, read_codeact_rows
from ray_app.train.config import CODEACT_TRACK, TrainConfig
from ray_app.train.sft_worker import LOCAL_MODE_LOG, TrainBackendError

console = Console(stderr=True)


@dataclass(frozen=True)
class TrainOutcome:
    track: str
    trained: bool
    reason: str
    adapter_dir: Path | None = None
    training: dict[str, Any] | None = None


def fine_tune_gate(config: TrainConfig) -> tuple[bool, str]:
    """(train?, why): the decision's FINE_TUNE flag for the track, unless --force."""
    if config.force:
        return True, "--force"
    if config.track == CODEACT_TRACK:
        return codeact_fine_tune_gate(config)
    if not config.decision_file.is_file():
        return (
            False,
            f"no decision at {project_relative(config.decision_file)}: run `slm-swap decide` first, or --force",
        )
    decision = Decision.read(config.decision_file)
    track_result = decision.tracks.get(config.track)
    if track_result is None:
        missing = decision.missing.get(config.track, "the track was not decided")
        return False, f"decision.json has no result for {config.track}: {missing}"
    if track_result.fine_tune == 1:
        return True, f"decision says FINE_TUNE=1 ({track_result.reason})"
    return False, f"decision says FINE_TUNE=0 ({track_result.reason}); --force trains anyway"


def resolve_backend(config: TrainConfig, gpus: int) -> str:
    """`auto`: unsloth when there is a GPU and the package, else peft. Never a silent switch."""
    import importlib.util

    if config.backend != "auto":
        if config.backend == "unsloth" and not gpus:
            raise TrainBackendError("--backend unsloth needs a GPU in the cluster; use --backend peft on CPU")
        return config.backend
    return "unsloth" if gpus and importlib.util.find_spec("unsloth") else "peft"


def training_plan(config: TrainConfig) -> dict[str, Any]:
    """Validate the data and settle every setting the run depends on (before any compute)."""
    from ray_app.ray_runtime import cluster_cpus, cluster_gpus, cluster_nodes

    train_path = config.dataset_root / config.track / "train.jsonl"
    val_path = config.dataset_root / config.track / "val.jsonl"
    if config.track == CODEACT_TRACK:
        train_rows, val_rows = read_codeact_rows(config, train_path, val_path)
    else:
        train_rows = [row.to_json() for row in read_split(train_path, config.track)[: config.max_train_rows]]
        val_rows = [row.to_json() for row in read_split(val_path, config.track)] if val_path.is_file() else []
        val_rows = val_rows[: config.max_val_rows]
    if not train_rows:
        raise DatasetError(f"{train_path}: no training rows")
    model_path = resolve_slm_model_path(config.model_path)
    gpus = cluster_gpus()
    gpus_per_worker = config.gpus_per_worker if config.gpus_per_worker is not None else (1 if gpus else 0)
    quantization = config.quantization if config.quantization != "auto" else ("8bit" if gpus_per_worker else "none")
    backend = resolve_backend(config, gpus_per_worker)
    num_workers, workers_reason = training_workers(config.num_workers, bool(gpus_per_worker), cluster_nodes)
    cpus_per_worker = config.cpus_per_worker or (
        1 if gpus_per_worker else max(1, int(cluster_cpus()) // max(1, num_workers))
    )
    settings = {
        "backend": backend,
        "quantization": quantization,
        "lora": dataclasses.asdict(config.lora),
        "learning_rate": config.learning_rate,
        "epochs": config.epochs,
        "max_length": config.max_length,
        "per_device_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_steps": config.max_steps,
        "save_steps": config.save_steps,
        "gradient_checkpointing": config.gradient_checkpointing,
        "cpu_bf16": False if gpus_per_worker else config.cpu_bf16,  # None: each worker's CPU decides
        "seed": config.seed,
        "num_workers": num_workers,
        "gpus_per_worker": gpus_per_worker,
        "cpus_per_worker": cpus_per_worker,
    }
    identity = {
        "track": config.track,
        "train_sha256": file_sha256(train_path),
        "val_sha256": file_sha256(val_path) if val_path.is_file() else None,
        "max_train_rows": config.max_train_rows,
        "max_val_rows": config.max_val_rows,
        "model_fingerprint": folder_fingerprint(model_path),
        **settings,
    }
    worker_data, record = {"train_rows": train_rows, "val_rows": val_rows}, {}
    if config.track == CODEACT_TRACK:  # pre-tokenized with the loss masks; loss_on keys the run (v0 keys unchanged)
        identity["loss_on"] = config.loss_on
        worker_data, record = codeact_worker_data(config, model_path, train_path, train_rows, val_rows)
    return {
        "model_path": str(model_path),
        "train_path": train_path,
        "val_path": val_path,
        "train_rows": train_rows,
        "val_rows": val_rows,
        "worker_data": worker_data,  # what the workers train on
        "track_record": record,  # the track's own facts for training.json (codeact: loss_on, token counts)
        "settings": settings,
        "identity": identity,
        "run_key": run_key_of(identity),
        "workers_reason": workers_reason,
    }


def ray_run_name(config, plan: dict[str, Any]) -> str:
    """The run's name under the storage path: its settings' name and its inputs' key (see Checkpoints)."""
    return f"{config.run_name}-{plan['run_key'][:12]}"


def run_folder(config, plan: dict[str, Any]) -> Path:
    """The run's folder under the storage path (in local mode: the Trainer's checkpoints and train.log)."""
    return config.storage_path / ray_run_name(config, plan)


def training_workers(num_workers: int | None, on_gpus: bool, cluster_nodes) -> tuple[int, str]:
    """How many Ray Train workers the run gets, and why. None (the default) picks Ray Train's local mode
    (0: `train_loop_per_worker` runs in this process) on a single node without GPUs, else 1 worker.

    On one CPU node a worker brings nothing to share: the run takes every CPU either way, and the
    worker process costs its start. Measured (demo-shaped structured run, 40 rows, 20 steps; AMD EPYC
    with avx512_bf16, 2 cores, 2026-12-03): `slm-swap train` 125.4 s with one worker, 84.6 s in local
    mode, byte-identical adapters: Ray Train starts a controller and a worker actor (21-29 s for a
    loop that does nothing) and the worker imports torch, transformers, PEFT and TRL again (~9 s)."""
    if num_workers is not None:
        return num_workers, "set (--workers)"
    if on_gpus:
        return 1, "default: one GPU worker"
    if cluster_nodes() > 1:
        return 1, "default: one CPU worker (the cluster has several nodes)"
    return 0, "default on a single node without GPUs: Ray Train's local mode, the loop runs in this process"


def fit_on_ray_train(config: TrainConfig, plan: dict[str, Any]):
    """Build the TorchTrainer for this run and fit it (one progress bar); returns the Ray Train result."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_app.ray_runtime import ensure_ray
    from ray_app.train.progress import TrainingProgress
    from ray_app.train.sft_worker import train_loop_per_worker

    ensure_ray()  # never let fit() auto-join whatever cluster /tmp/ray/ray_current_cluster names
    settings = plan["settings"]
    num_workers = settings["num_workers"]
    use_gpu = bool(settings["gpus_per_worker"])
    resources = {"CPU": settings["cpus_per_worker"], **({"GPU": settings["gpus_per_worker"]} if use_gpu else {})}
    progress = TrainingProgress(f"train {config.track} (optimizer steps)")
    # Local mode has no Ray Train storage: the loop keeps its checkpoints in the run's folder itself.
    local_run_dir = {"local_run_dir": str(run_folder(config, plan))} if num_workers == 0 else {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            **settings,
            "model_path": plan["model_path"],
            **plan["worker_data"],
            "progress_steps": progress.steps,
            **local_run_dir,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=ray_run_name(config, plan),
            storage_path=str(config.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep),
        ),
    )
    with progress:
        return fit_interruptibly(trainer)


def fit_interruptibly(trainer):
    """`trainer.fit()`, where Ctrl-C raises KeyboardInterrupt like anywhere else in the job.

    During fit() Ray Train's own SIGINT handler aborts the run (workers stopped, checkpoints kept for
    the resume) and then exits with status 0, and it stays installed after fit() returns: the exit
    becomes a KeyboardInterrupt here, and the handler that was there before comes back.
    """
    import signal

    sigint_handler = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    except SystemExit:  # only Ray Train's SIGINT handler exits from inside fit()
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, sigint_handler)


def install_adapter(result, adapter_dir: Path) -> None:
    """Copy the final adapter out of the run's last checkpoint; replace the old one only when complete."""
    from ray_app.train.sft_worker import FINAL_ADAPTER_DIR

    if result.checkpoint is None:
        raise RuntimeError("the training run reported no checkpoint")
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.", dir=adapter_dir.parent))
    try:
        with result.checkpoint.as_directory() as checkpoint_dir:
            source = Path(checkpoint_dir) / FINAL_ADAPTER_DIR
            if not is_adapter_folder(source):
                raise RuntimeError(f"the last checkpoint holds no adapter: {not_an_adapter_message(source)}")
            shutil.copytree(source, staging, dirs_exist_ok=True)
        staging.chmod(0o755)
        previous = adapter_dir.with_name(adapter_dir.name + ".previous")
        if adapter_dir.exists():
            shutil.rmtree(previous, ignore_errors=True)
            adapter_dir.rename(previous)
        staging.rename(adapter_dir)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run_train(config: TrainConfig) -> TrainOutcome:
    """Train the track's adapter when the decision asks for it; return what happened."""
    from ray_app.tracing import start_run_trace

    train, why = fine_tune_gate(config)
    if not train:
        console.print(f"train {config.track}: skipped: {why}", highlight=False)
        return TrainOutcome(config.track, False, why)
    plan = training_plan(config)
    training_json = config.adapter_dir / "training.json"
    adapter_complete = is_adapter_folder(config.adapter_dir)  # a clone carries training.json, not the weights
    if (
        adapter_complete
        and training_json.is_file()
        and json.loads(training_json.read_text()).get("run_key") == plan["run_key"]
    ):
        console.print(f"train {config.track}: adapter up to date (run key {plan['run_key'][:12]} matches), reused")
        training = json.loads(training_json.read_text())
        return TrainOutcome(config.track, False, "adapter up to date", config.adapter_dir, training)
    with start_run_trace(
        name=f"train {config.track}",
        kind="train",
        input={
            "train": project_relative(plan["train_path"]),
            "val": project_relative(plan["val_path"]),
            "rows": {"train": len(plan["train_rows"]), "val": len(plan["val_rows"])},
            "config": jsonable(config),
            "settings": plan["settings"],
        },
        metadata={"track": config.track, "run_key": plan["run_key"], "gate": why},
        require_langfuse=config.require_langfuse,
        local_dir=config.eval_root / "traces",
    ) as trace:
        workers = plan["settings"]["num_workers"]
        console.print(
            f"train {config.track}: {len(plan['train_rows'])} rows, backend {plan['settings']['backend']}, "
            + (
                f"{workers} worker(s)"
                if workers
                else "Ray Train local mode (in this process; the libraries' output goes to "
                f"{project_relative(run_folder(config, plan) / LOCAL_MODE_LOG)})"
            )
            + f"; {why}",
            highlight=False,
        )
        started = time.perf_counter()
        with trace.span("ray-train fit", input={"run_key": plan["run_key"]}) as span:
            result = fit_on_ray_train(config, plan)
            span.update(output={k: v for k, v in result.metrics.items() if k != "loss_curve"})
        install_adapter(result, config.adapter_dir)
        metrics = result.metrics
        training = {
            "track": config.track,
            "adapter": project_relative(config.adapter_dir),
            "backend": plan["settings"]["backend"],
            "run_key": plan["run_key"],
            "identity": plan["identity"],
            "settings": plan["settings"],
            "workers_reason": plan["workers_reason"],
            "rows": {"train": len(plan["train_rows"]), "val": len(plan["val_rows"])},
            **plan["track_record"],
            "train_loss": metrics.get("train_loss"),
            "val_loss": metrics.get("eval_loss"),
            "loss_curve": metrics.get("loss_curve"),
            "global_step": metrics.get("global_step"),
            "resumed_from_step": metrics.get("resumed_from_step"),
            "tokens_per_s": metrics.get("tokens_per_s"),
            "precision": metrics.get("precision"),  # decided on the worker, with its reason
            "precision_reason": metrics.get("precision_reason"),
            "allocator": metrics.get("allocator"),  # the worker's, with its reason
            "allocator_reason": metrics.get("allocator_reason"),
            "train_seconds_last_attempt": metrics.get("train_seconds_this_attempt"),
            "wall_time_s": round(time.perf_counter() - started, 3),
            "ray_train_run": str(result.path) if getattr(result, "path", None) else None,
            "base_model_path": plan["model_path"],
            **run_facts(config),
        }
        atomic_write_json(training_json, training)
        console.print(
            f"train {config.track}: adapter → {project_relative(config.adapter_dir)} "
            f"(train loss {training['train_loss']}, "
            f"val loss {training['val_loss']}, {training['tokens_per_s']} tokens/s)",
            highlight=False,
        )
        trace.end(
            output={
                "adapter": training["adapter"],
                "loss_curve": training["loss_curve"],
                "val_loss": training["val_loss"],
                "tokens_per_s": training["tokens_per_s"],
            }
        )
    return TrainOutcome(config.track, True, why, config.adapter_dir, training)
