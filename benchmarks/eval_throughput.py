"""Ray Data evaluation vs a plain single-process loop: same rows, same engine, same batch size.

For each precision, the plain loop loads the SLM and generates in this process; the pipeline runs
the same fixed batches through `predict_with_ray_data` with one actor. Prints one JSON object with
generated tokens/s of both, end to end (model load included, as a user waits for it) and
generation only (time inside `generate`), and the pipeline/plain ratios. Target on CPU with the
demo SLM: pipeline ≥ 0.9 × plain.

    .venv/bin/python benchmarks/eval_throughput.py [--rows 32] [--max-new-tokens 64] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from ray_app.data.rows import read_split
from ray_app.engines.base import EngineRequest
from ray_app.engines.slm import SlmEngine, SlmSettings
from ray_app.eval.ray_predictor import fixed_batches, predict_with_ray_data
from ray_app.models.demo_checkpoint import fetch_demo_model
from ray_app.paths import DATASET_ROOT
from ray_app.ray_runtime import ensure_ray


def plain_loop(rows, settings: SlmSettings) -> dict:
    started = time.perf_counter()
    engine = SlmEngine(settings)
    generate_started = time.perf_counter()
    generations = engine.generate([EngineRequest(i, "toolcall", row.prompt) for i, row in enumerate(rows)])
    finished = time.perf_counter()
    tokens = sum(g.completion_tokens for g in generations)
    return {
        "completion_tokens": tokens,
        "end_to_end_s": round(finished - started, 2),
        "generation_s": round(finished - generate_started, 2),
        "texts": [g.text for g in generations],
    }


def ray_pipeline(rows, settings: SlmSettings, actor_num_cpus: float) -> dict:
    started = time.perf_counter()
    results = list(
        predict_with_ray_data(
            rows, fixed_batches(rows, settings.batch_size), settings, "toolcall", 1, actor_num_cpus, 0
        )
    )
    finished = time.perf_counter()
    records = sorted((r for result in results for r in result["records"]), key=lambda r: r["index"])
    return {
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "end_to_end_s": round(finished - started, 2),
        "generation_s": round(sum(result["elapsed_s"] for result in results), 2),
        "texts": [r["prediction"] for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    model_dir, _ = fetch_demo_model()
    rows = read_split(DATASET_ROOT / "toolcall" / "test.jsonl")[: args.rows]
    ensure_ray()
    cpus = os.cpu_count() or 1
    report = {"benchmark": "eval_throughput", "rows": len(rows), "batch_size": args.batch_size, "cpus": cpus}
    for precision in args.precisions.split(","):
        settings = SlmSettings(
            model_path=model_dir,
            precision=precision,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            device="cpu",
            cpu_threads=cpus,  # the one actor gets every core, like the plain loop
        )
        plain = plain_loop(rows, settings)
        pipeline = ray_pipeline(rows, settings, actor_num_cpus=0.5)
        entry = {}
        for name, result in (("plain_loop", plain), ("ray_data_pipeline", pipeline)):
            entry[name] = {
                "completion_tokens": result["completion_tokens"],
                "end_to_end_s": result["end_to_end_s"],
                "generation_s": result["generation_s"],
                "tokens_per_s_end_to_end": round(result["completion_tokens"] / result["end_to_end_s"], 1),
                "tokens_per_s_generation": round(result["completion_tokens"] / result["generation_s"], 1),
            }
        entry["ratio_end_to_end"] = round(
            entry["ray_data_pipeline"]["tokens_per_s_end_to_end"] / entry["plain_loop"]["tokens_per_s_end_to_end"], 3
        )
        entry["ratio_generation"] = round(
            entry["ray_data_pipeline"]["tokens_per_s_generation"] / entry["plain_loop"]["tokens_per_s_generation"], 3
        )
        entry["same_predictions"] = plain["texts"] == pipeline["texts"]
        report[precision] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
