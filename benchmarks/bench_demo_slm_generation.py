"""Greedy generation throughput of the demo SLM on this machine: fp32 vs bf16, batch 1 vs batch 8.

Prints one JSON object: per setting, generated tokens/s and seconds per row over the same test
prompts, with fp32 at batch 1 as the baseline measured in the same run (ratios are what to compare
across machines). Needs the demo SLM (`slm-swap models fetch-demo`).

    .venv/bin/python benchmarks/bench_demo_slm_generation.py [--rows 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ray_app.data.rows import read_split
from ray_app.models.demo_checkpoint import fetch_demo_model
from ray_app.paths import DATASET_ROOT
from ray_app.prompts import chat_messages


def generated_tokens_per_second(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> dict:
    tokenizer.padding_side = "left"  # decoder-only batching: pad on the left so answers start aligned
    generated = 0
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(chat_messages(p), add_generation_prompt=True, tokenize=False)
            for p in prompts[start : start + batch_size]
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        generated += int((new_tokens != tokenizer.pad_token_id).sum())
    seconds = time.perf_counter() - started
    return {
        "generated_tokens": generated,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(generated / seconds, 1),
        "s_per_row": round(seconds / len(prompts), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(42)
    model_dir, _ = fetch_demo_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [row.prompt for row in read_split(DATASET_ROOT / "structured" / "test.jsonl")[: args.rows]]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        for batch_size in (1, 8):
            name = f"{str(dtype).removeprefix('torch.')}_batch{batch_size}"
            results[name] = generated_tokens_per_second(model, tokenizer, prompts, batch_size, args.max_new_tokens)
    baseline = results["float32_batch1"]["tokens_per_s"]
    for result in results.values():
        result["speedup_vs_fp32_batch1"] = round(result["tokens_per_s"] / baseline, 2)
    print(
        json.dumps(
            {
                "benchmark": "demo_slm_greedy_generation",
                "machine": {"cpus": torch.get_num_threads(), "processor": platform.machine()},
                "rows": len(prompts),
                "max_new_tokens": args.max_new_tokens,
                "baseline": "float32_batch1",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
