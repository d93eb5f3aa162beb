"""Training tokens/s: the plain TRL trainer in this process vs the same job inside Ray Train (1 worker).

Both build the trainer with `build_sft_trainer` (same model, LoRA r=64, rows, batch, steps, seed) and
time `trainer.train()`; tokens are TRL's count of trained tokens. End-to-end times (model load, and
for Ray the worker start) are printed beside them. Ray is started before either side runs, so both
share the same machine state. Target: Ray Train ≥ 0.9 × plain.

    .venv/bin/python benchmarks/train_throughput.py [--rows 16] [--steps 8] [--rounds 2] [--ray-first]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ray_app.data.rows import read_split
from ray_app.models.demo_checkpoint import fetch_demo_model
from ray_app.paths import DATASET_ROOT
from ray_app.ray_runtime import ensure_ray


def loop_config(model_dir: Path, rows, steps: int, cpus: int) -> dict:
    return {
        "backend": "peft",
        "quantization": "none",
        "lora": {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
        "learning_rate": 2e-4,
        "epochs": 1.0,
        "max_length": 2048,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "save_steps": 10_000,  # no checkpoint inside the timed window, on either side
        "cpu_bf16": False,  # fp32, as the README's numbers (None would follow the CPU's native bf16)
        "seed": 42,
        "num_workers": 1,
        "gpus_per_worker": 0,
        "cpus_per_worker": cpus,
        "model_path": str(model_dir),
        "train_rows": [row.to_json() for row in rows],
        "val_rows": [],
    }


def plain_trainer(config: dict) -> dict:
    import torch

    from ray_app.engines.determinism import apply_determinism
    from ray_app.train.sft_worker import build_sft_trainer

    apply_determinism(42)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, _ = build_sft_trainer(config, torch.device("cpu"), Path(output_dir), [], show_progress=False)
        train_started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - train_started
    tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry][-1]
    return {
        "tokens": int(tokens),
        "train_s": round(seconds, 2),
        "end_to_end_s": round(time.perf_counter() - started, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "final_loss": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][-1],
    }


def ray_train(config: dict, storage: Path) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_app.train.sft_worker import train_loop_per_worker

    started = time.perf_counter()
    result = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=False, resources_per_worker={"CPU": config["cpus_per_worker"]}
        ),
        run_config=RunConfig(name=f"bench-{int(time.time())}", storage_path=str(storage)),
    ).fit()
    metrics = result.metrics
    return {
        "tokens": metrics["tokens_this_attempt"],
        "train_s": metrics["train_seconds_this_attempt"],
        "end_to_end_s": round(time.perf_counter() - started, 2),
        "tokens_per_s": metrics["tokens_per_s"],
        "final_loss": metrics["loss_curve"][-1][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--track", default="toolcall")
    parser.add_argument("--ray-first", action="store_true", help="start with the Ray Train side (order check)")
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="ABBA rounds: each round runs both sides, alternating which goes first; medians are compared",
    )  # fmt: skip
    args = parser.parse_args()
    model_dir, _ = fetch_demo_model()
    rows = read_split(DATASET_ROOT / args.track / "train.jsonl")[: args.rows]
    cpus = os.cpu_count() or 1
    config = loop_config(model_dir, rows, args.steps, cpus)
    # The trainers print their logs on stdout; keep stdout for the JSON report alone.
    # Ray's daemons (GCS, raylet, dashboard) take a share of 2 cores while Ray is up; start Ray
    # before either side so both are measured on the same machine state. Whichever side runs first
    # on a freshly started process measured faster (order effect: 0.85 plain first vs 0.94 Ray
    # first), so rounds alternate the order (ABBA) and the ratio is of the medians.
    ensure_ray()
    plain_runs, ray_runs = [], []
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as storage:
        for round_index in range(args.rounds):
            ray_first = (round_index % 2 == 0) == args.ray_first
            sides = [("ray", ray_runs), ("plain", plain_runs)]
            for side, runs in sides if ray_first else reversed(sides):
                runs.append(ray_train(config, Path(storage)) if side == "ray" else plain_trainer(config))
    plain_median = statistics.median(run["tokens_per_s"] for run in plain_runs)
    ray_median = statistics.median(run["tokens_per_s"] for run in ray_runs)
    report = {
        "benchmark": "train_throughput",
        "track": args.track,
        "rows": len(rows),
        "steps": args.steps,
        "cpus": cpus,
        "lora_r": 64,
        "rounds": args.rounds,
        "first_round_order": "ray_train first" if args.ray_first else "plain first",
        "plain_trl": plain_runs,
        "ray_train_1_worker": ray_runs,
        "plain_tokens_per_s_median": plain_median,
        "ray_train_tokens_per_s_median": ray_median,
        "ratio_tokens_per_s": round(ray_median / plain_median, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
