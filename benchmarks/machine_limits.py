"""How close a server comes to this machine's limit: a GEMM probe for prefill, a copy probe for decode.

Prefill is compute-bound: every prompt token goes through every matrix once, 2 FLOP per weight, so
its floor is prompt tokens × 2 × matmul parameters / GEMM rate. The rate is measured on a
prefill-shaped matmul ([512 × hidden] × [hidden × MLP width], SmolLM2-135M: 576 and 1,536) with
torch on every core, in fp32 and bf16; the floor uses the faster, since that is what the machine
can do (bf16 runs on AMX or AVX512-BF16 where the CPU has them: about 2x fp32 on the 2-core dev
machine). Attention scores and the vocabulary projection are not counted (both servers compute
logits for the last prompt position only).

Decode is memory-bound at these batch sizes: each step reads every weight once whatever the number
of rows, so its floor is steps × weight bytes / memory bandwidth, with steps = completion tokens /
clients (every client's row in every step: the best batching can do) and the bandwidth from
copying a 256 MiB tensor (bytes read + written per second). Weight bytes: parameters × 4 (fp32) or
× 2 (bf16) for ours; the GGUF file's size for llama.cpp (the demo Q4_1 file: 0.73 B/parameter, its
embedding being Q8_0; F16: 2).

A configuration's fraction of the limit is (prefill floor + decode floor) / its measured wall time:
1.0 would be at the limit; a prefix cache that skips prefill can make it exceed 1. Both probes are
rough (one shape, one copy), good for "how far from the machine's limit", not for a third digit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROBE_TOKENS = 512  # a prefill-like number of rows for the GEMM probe
COPY_PROBE_BYTES = 256 * 1024 * 1024  # well past any last-level cache
PROBE_REPEATS = 5  # the best of a few runs: the machine's limit, not its average noise
BYTES_PER_PARAMETER = {"fp32": 4.0, "bf16": 2.0}
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description(cpuinfo_text: str | None = None) -> dict:
    """The CPU's model name (what lscpu shows) and which of the matmul-relevant features it has."""
    if cpuinfo_text is None:
        cpuinfo_text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    fields: dict[str, str] = {}
    for line in cpuinfo_text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() not in fields:  # the first processor's entry speaks for all
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    features = {feature: feature in flags for feature in CPU_FEATURES}
    return {"model_name": fields.get("model name", "unknown"), **features}


def matmul_parameters(config: dict) -> int:
    """Weights a prompt token multiplies through in a Llama-style decoder (attention + gated MLP,
    every layer); embeddings and the vocabulary projection left out."""
    hidden, width, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_width = config.get("num_key_value_heads", heads) * head_dim
    attention = hidden * heads * head_dim * 2 + hidden * kv_width * 2  # q and o; k and v
    return layers * (attention + 3 * hidden * width)


def all_parameters(config: dict) -> int:
    """Every weight a decode step reads: the matmuls, the vocabulary projection (tied or not, it is
    read once per step), and the norms (negligible, left out)."""
    return matmul_parameters(config) + config["vocab_size"] * config["hidden_size"]


def gemm_gflops(dtype_name: str, rows: int = PROBE_TOKENS, hidden: int = 576, width: int = 1536) -> float:
    """GFLOP/s of a [rows × hidden] × [hidden × width] matmul with torch on every core, best of a few."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        generator = torch.Generator().manual_seed(0)
        left = torch.randn(rows, hidden, generator=generator).to(dtype)
        right = torch.randn(hidden, width, generator=generator).to(dtype)
        calls = 20
        for _ in range(3):  # warm-up: kernels picked, pages touched
            torch.matmul(left, right)
        best_s = float("inf")
        for _ in range(PROBE_REPEATS):
            started = time.perf_counter()
            for _ in range(calls):
                torch.matmul(left, right)
            best_s = min(best_s, (time.perf_counter() - started) / calls)
    finally:
        torch.set_num_threads(threads_before)
    return 2 * rows * hidden * width / best_s / 1e9


def copy_gb_per_s(size_bytes: int = COPY_PROBE_BYTES) -> float:
    """Memory bandwidth as bytes read + written per second while copying one tensor into another."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        source = torch.ones(size_bytes // 4, dtype=torch.float32)
        target = torch.empty_like(source)
        target.copy_(source)  # warm-up: pages touched
        best_s = float("inf")
        for _ in range(PROBE_REPEATS):
            started = time.perf_counter()
            target.copy_(source)
            best_s = min(best_s, time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads_before)
    return 2 * size_bytes / best_s / 1e9


def probe_machine(config: dict) -> dict:
    """The machine's measured rates, on the model's own prefill shape."""
    shape = {"rows": PROBE_TOKENS, "hidden": config["hidden_size"], "width": config["intermediate_size"]}
    from ray_app.engines.precision import cpu_bf16_support

    # bf16 only where the CPU computes it: emulated (AVX2 only) it runs at ~1 GFLOP/s, and timing it took
    # two minutes on a real AVX2-only AMD EPYC (2026-12-06) for a figure no floor would use
    bf16 = cpu_bf16_support()
    dtypes = ("fp32", "bf16") if bf16.native else ("fp32",)
    gemm = {name: round(gemm_gflops(name, **shape), 1) for name in dtypes}
    return {
        "cpu": cpu_description(),
        "cores": os.cpu_count(),
        "gemm_shape": f"[{shape['rows']} x {shape['hidden']}] x [{shape['hidden']} x {shape['width']}]",
        "gemm_gflops": gemm,
        "gemm_bf16": "timed" if bf16.native else f"not timed: emulated on this CPU ({bf16.evidence})",
        "gemm_gflops_used": max(gemm.values()),
        "copy_gb_per_s": round(copy_gb_per_s(), 1),
    }


def limit_fraction(
    prompt_tokens: int,
    completion_tokens: int,
    clients: int,
    wall_s: float,
    matmul_params: int,
    weight_bytes: float,
    gemm_gflops_used: float,
    copy_gb_per_s_measured: float,
) -> dict:
    """The prefill and decode floors of one load (seconds) and the share of the limit its wall time reached."""
    prefill_floor_s = prompt_tokens * 2 * matmul_params / (gemm_gflops_used * 1e9)
    decode_steps = completion_tokens / clients
    decode_floor_s = decode_steps * weight_bytes / (copy_gb_per_s_measured * 1e9)
    return {
        "prefill_floor_s": round(prefill_floor_s, 2),
        "decode_floor_s": round(decode_floor_s, 2),
        "weight_bytes": int(weight_bytes),
        "fraction_of_limit": round((prefill_floor_s + decode_floor_s) / wall_s, 3),
    }
