"""CPU training and evaluation under each memory allocator: glibc's malloc vs Ray's jemalloc vs tcmalloc.

Each measurement runs in a fresh process started the way a command starts (`run_with_allocator`, with
`SLM_SWAP_ALLOCATOR` set), and reports which allocator that process really had loaded:

- training: the demo's recipe (`build_sft_trainer`: LoRA r=64 on every linear layer, 1 row x 2
  accumulated, no gradient checkpointing, seed 42) on the first `--rows` train rows of `--track`; tokens/s
  is TRL's count of trained tokens over `trainer.train()`'s wall time; the final loss must not depend
  on the allocator;
- evaluation: the decode engine (`SlmEngine`, 32 rows together) on the first `--eval-rows` test
  prompts of `--track`; seconds and a hash of the answers, which must not depend on the allocator either.

Rounds alternate the order (A B C, C B A, ...) and medians are compared with glibc's. Prints one JSON
object naming the CPU. `--precision fp32` (default; what an AVX2-only CPU runs) or `auto` (what the
CPU computes natively).

    .venv/bin/python benchmarks/cpu_allocator.py [--track toolcall] [--rows 8] [--eval-rows 16] [--rounds 2]
        [--precision fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/cpu_allocator.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_limits import cpu_description  # noqa: E402
from ray_app.memory_allocator import (  # noqa: E402
    ALLOCATOR_ENV,
    environment_to_choose_afresh,
    ray_jemalloc,
    system_tcmalloc,
)


def measure(track: str, rows: int, eval_rows: int, precision: str) -> dict:
    """One process's measurement (run as `--worker`, after `run_with_allocator`)."""
    import torch

    from benchmarks.train_throughput import loop_config
    from ray_app.data.rows import read_split
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.determinism import apply_determinism
    from ray_app.engines.slm import SlmSettings
    from ray_app.memory_allocator import allocator_in_use
    from ray_app.models.demo_checkpoint import fetch_demo_model
    from ray_app.paths import DATASET_ROOT
    from ray_app.train.sft_worker import build_sft_trainer

    model_dir, _ = fetch_demo_model()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    train_rows = read_split(DATASET_ROOT / track / "train.jsonl")[:rows]
    config = loop_config(model_dir, train_rows, steps=rows // 2, cpus=threads)
    config.update(
        per_device_batch_size=1,  # the demo profile's batch: 1 row x 2 accumulated, no checkpointing
        gradient_accumulation_steps=2,
        gradient_checkpointing=False,
        cpu_bf16=None if precision == "auto" else False,
    )
    apply_determinism(42)
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as output_dir:
        trainer, _ = build_sft_trainer(config, torch.device("cpu"), Path(output_dir), [], show_progress=False)
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
    history = trainer.state.log_history
    tokens = [entry["num_tokens"] for entry in history if "num_tokens" in entry][-1]
    del trainer

    prompts = [row.prompt for row in read_split(DATASET_ROOT / track / "test.jsonl", track)[:eval_rows]]
    engine = SlmEngine(
        SlmSettings(
            model_path=model_dir,
            precision=precision,
            batch_size=32,
            max_new_tokens=64,
            device="cpu",
            cpu_threads=threads,
        )
    )
    engine.generate([EngineRequest(0, track, prompts[-1])])  # warm-up: kernels, probes
    started = time.perf_counter()
    answers = engine.generate([EngineRequest(index, track, prompt) for index, prompt in enumerate(prompts)])
    eval_s = time.perf_counter() - started
    return {
        **allocator_in_use(),
        "train_tokens": int(tokens),
        "train_s": round(train_s, 2),
        "train_tokens_per_s": round(tokens / train_s, 1),
        "final_loss": [entry["loss"] for entry in history if "loss" in entry][-1],
        "eval_s": round(eval_s, 2),
        "eval_completion_tokens": sum(answer.completion_tokens for answer in answers),
        "eval_answers_sha256": hashlib.sha256("\x00".join(a.text for a in answers).encode()).hexdigest()[:16],
    }


def run_one(allocator: str, args: argparse.Namespace) -> dict:
    environ = environment_to_choose_afresh(dict(os.environ))
    environ[ALLOCATOR_ENV] = allocator
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--track",
        args.track,
        "--rows",
        str(args.rows),
        "--eval-rows",
        str(args.eval_rows),
    ]
    done = subprocess.run(
        [*command, "--precision", args.precision], env=environ, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{allocator}: the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--track", choices=("toolcall", "structured"), default="toolcall")
    parser.add_argument("--rows", type=int, default=8, help="train rows (an even number: 1 x 2 per step)")
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "auto"), default="fp32")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from ray_app.memory_allocator import run_with_allocator

        run_with_allocator()
        print(json.dumps(measure(args.track, args.rows, args.eval_rows, args.precision)))
        return

    allocators = ["glibc", *(["jemalloc"] if ray_jemalloc() else []), *(["tcmalloc"] if system_tcmalloc() else [])]
    runs: dict[str, list[dict]] = {name: [] for name in allocators}
    for round_index in range(args.rounds):
        for name in allocators if round_index % 2 == 0 else reversed(allocators):
            runs[name].append(run_one(name, args))
            print(f"round {round_index + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    medians = {
        name: {
            "train_tokens_per_s": round(statistics.median(run["train_tokens_per_s"] for run in results), 1),
            "eval_s": round(statistics.median(run["eval_s"] for run in results), 2),
        }
        for name, results in runs.items()
    }
    glibc = medians["glibc"]
    report = {
        "benchmark": "cpu_allocator",
        "cpu": cpu_description(),
        "precision": args.precision,
        "track": args.track,
        "train_rows": args.rows,
        "eval_rows": args.eval_rows,
        "rounds": args.rounds,
        "runs": runs,
        "medians": medians,
        "train_speedup_vs_glibc": {
            name: round(m["train_tokens_per_s"] / glibc["train_tokens_per_s"], 3) for name, m in medians.items()
        },
        "eval_speedup_vs_glibc": {name: round(glibc["eval_s"] / m["eval_s"], 3) for name, m in medians.items()},
        "same_final_loss": len({run["final_loss"] for results in runs.values() for run in results}) == 1,
        "same_answers": len({run["eval_answers_sha256"] for results in runs.values() for run in results}) == 1,
        "loaded_as_asked": all(run["allocator"] == name for name, results in runs.items() for run in results),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
