"""Typed settings of a fine-tuning run, with the seed's values as defaults (CLI flags override them).

The field types (with their bounds, `ray_app.settings`) are what `slm-swap train` and the main job's
config parse flags and files to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ray_app.codeact.trajectory_dataset import CODEACT_TRACK  # Phase II: CodeAct trajectories
from ray_app.data.rows import Track
from ray_app.paths import ADAPTER_ROOT, DATASET_ROOT, EVAL_ROOT, RAY_TRAIN_STORAGE
from ray_app.settings import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

Backend = Literal["auto", "unsloth", "peft"]
Quantization = Literal["auto", "8bit", "4bit", "none"]
TrainTrack = Track | Literal["codeact"]
LossOn = Literal["assistant", "all"]
TrainStrategy = Literal["sequential", "parallel"]  # several tracks: one after another, or at once


@dataclass(frozen=True)
class LoraSettings:
    r: PositiveInt = 64
    alpha: PositiveInt = 16
    dropout: NonNegativeFloat = 0.1
    target_modules: str = "all-linear"  # every linear projection (PEFT's default is q_proj/v_proj only)


@dataclass(frozen=True)
class TrainConfig:
    track: TrainTrack
    model_path: str | None = None  # None: SLM_MODEL_PATH, then the seed's default
    dataset_root: Path = DATASET_ROOT
    adapter_root: Path = ADAPTER_ROOT  # writes <adapter_root>/adapter_<track>/
    backend: Backend = "auto"  # unsloth with a GPU and the package, else peft
    quantization: Quantization = "auto"  # 8-bit on GPU (the seed), none on CPU; 4bit is QLoRA proper
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: PositiveFloat = 2e-4
    epochs: PositiveFloat = 1.0
    max_length: PositiveInt = 2048
    per_device_batch_size: PositiveInt = 2
    gradient_accumulation_steps: PositiveInt = 4  # effective batch 8 per worker: ~38 optimizer steps on 300 rows
    max_steps: int = -1  # > 0 caps the run (a smaller demo budget); -1: the epochs decide
    max_train_rows: PositiveInt | None = None  # None: the whole train split
    max_val_rows: NonNegativeInt | None = None
    save_steps: PositiveInt = 10  # a Ray Train checkpoint every N optimizer steps (resume point)
    gradient_checkpointing: bool = True  # saves activation memory (GPU, 2048 tokens); costs recompute
    # On CPU: bf16 autocast (~1.5x the fp32 tokens/s where the CPU has native bf16; emulated, far
    # slower without). None: decided on each worker, bf16 where its CPU has avx512_bf16 or AMX.
    cpu_bf16: bool | None = None
    seed: NonNegativeInt = 42
    # Ray Train workers; 0: Ray Train's local mode, the loop runs in this process. None: 0 on a single
    # node without GPUs (a worker process costs ~40 s more per track there: train.py), else 1.
    num_workers: NonNegativeInt | None = None
    gpus_per_worker: NonNegativeFloat | None = None  # None: 1 when the cluster has GPUs, else CPU workers
    cpus_per_worker: PositiveFloat | None = None  # None: 1 with GPUs, else the machine's CPUs split between workers
    checkpoints_to_keep: PositiveInt = 2
    storage_path: Path = RAY_TRAIN_STORAGE  # checkpoints, per run name (SLM_SWAP_STORAGE_PATH moves it)
    force: bool = False  # train even when the decision says FINE_TUNE=0
    # The gate reads the track's FINE_TUNE here; None: <eval_root>/decision.json, for codeact
    # <eval_root>/codeact/decision.json (its own evaluation's decision, key `fine_tune`).
    decision_path: Path | None = None
    eval_root: Path = EVAL_ROOT  # the run's trace goes to <eval_root>/traces/ beside the other steps'
    require_langfuse: bool | None = None
    # codeact only: "assistant" puts the loss on the student's own turns (thought + code + end of turn),
    # system, task and observations labelled -100; "all" trains the same rows on every token (ablation).
    loss_on: LossOn = "assistant"

    def __post_init__(self) -> None:
        if self.loss_on not in ("assistant", "all"):
            raise ValueError(f"loss_on must be 'assistant' or 'all', got {self.loss_on!r}")
        if self.loss_on != "assistant" and self.track != CODEACT_TRACK:
            raise ValueError(f"loss_on={self.loss_on!r} applies to the codeact track only, not {self.track}")

    @property
    def decision_file(self) -> Path:
        if self.decision_path is not None:
            return self.decision_path
        return (
            self.eval_root / CODEACT_TRACK / "decision.json"
            if self.track == CODEACT_TRACK
            else self.eval_root / "decision.json"
        )

    @property
    def adapter_dir(self) -> Path:
        return self.adapter_root / f"adapter_{self.track}"

    @property
    def run_name(self) -> str:
        return f"slm-swap-train-{self.track}"
