"""The one precision setting of eval, training and serving, and the rule that resolves `auto`.

`auto` on a CUDA GPU loads bf16 where the GPU computes bf16 (`torch.cuda.is_bf16_supported`) and the
model's weights in bf16 take at most half of its memory (the rest for the key/value cache and
activations), else 8-bit (bitsandbytes), the seed's choice, which halves the weights but decodes
slower: on one H200 the engine ran 110.0 tok/s in bf16 vs 67.7 in 8-bit, HF generate 104.5 vs 65.1
(demo-shaped model, 32 prompts, 2026-12-04). The weights' size comes from the checkpoint's
safetensors headers (parameters × 2 bytes), the GPU's from torch on the machine that has it (a probe
task on the cluster when the deciding process has none: `ray_runtime.cluster_gpu_facts`). QLoRA
training quantizes its base by its own setting (`train --quantization`), not by this rule.

`auto` on CPU is bf16 where the CPU computes bf16 natively (the avx512_bf16 or AMX instructions),
else fp32: without them torch emulates bf16 and a matmul is ~50x slower (64x576x1536 on an AVX2-only
EPYC: 146.8 ms bf16, 2.7 ms fp32). Training's CPU autocast (`cpu_autocast_bf16`) follows the same rule.

Detection asks torch (`torch.cpu._is_avx512_bf16_supported`, `torch.cpu._is_amx_tile_supported`),
else /proc/cpuinfo's flags. It runs on the machine that loads the model (the Ray actor, the train
worker, the Serve replica), so the choice is never baked into a config made elsewhere.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "fp32", "bf16", "8bit", "4bit"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "8bit", "4bit")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo flags
GPU_BF16_MEMORY_SHARE = 0.5  # auto on a GPU: bf16 when its weights take at most this share of the GPU's memory
GIB = 1024**3

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuBf16Support:
    native: bool
    evidence: str  # the instructions found, or which were missing
    cpu: str  # the CPU's model name


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # what is loaded (never "auto")
    reason: str  # why, in a sentence a run record can carry
    device: str  # "cpu" or "cuda"
    cpu: str | None = None  # the CPU's model name when the CPU decided

    def summary(self) -> str:
        return f"{self.precision}: {self.reason}"


@dataclass(frozen=True)
class GpuFacts:
    """What `auto` needs to know of the GPU a model loads on."""

    name: str
    total_bytes: int
    bf16: bool  # computes bf16 natively (torch.cuda.is_bf16_supported: Ampere and later)


def local_gpu_facts() -> GpuFacts | None:
    """This process's first CUDA GPU (the one a model here loads on), or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return GpuFacts(properties.name, int(properties.total_memory), bool(torch.cuda.is_bf16_supported()))


def bf16_weight_bytes(model_path: str | Path) -> int | None:
    """The model's weights in bf16: its parameter count (from its safetensors headers, nothing loaded)
    × 2 bytes; None when the folder has no safetensors files to read."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    parameters = 0
    for path in files:
        with safe_open(str(path), framework="pt") as checkpoint:
            for name in checkpoint.keys():  # noqa: SIM118 (a safetensors handle has keys(), no __iter__)
                parameters += math.prod(checkpoint.get_slice(name).get_shape())
    return 2 * parameters


def gpu_auto_precision(model_path: str | Path | None, gpu: GpuFacts | None, device: str) -> PrecisionChoice:
    """`auto` on a CUDA GPU: bf16 when the GPU computes it and the weights fit in its share, else 8-bit."""
    seed = "8-bit (bitsandbytes), the seed's choice"
    if gpu is None:
        return PrecisionChoice("8bit", f"auto on a CUDA GPU: {seed}: no GPU seen where this was decided", device)
    if model_path is None:
        return PrecisionChoice("8bit", f"auto on {gpu.name}: {seed}: no model chosen yet to size", device)
    weights = bf16_weight_bytes(model_path)
    if weights is None:
        reason = f"auto on {gpu.name}: {seed}: the model's size is unknown (no safetensors files to read)"
        return PrecisionChoice("8bit", reason, device)
    if not gpu.bf16:
        return PrecisionChoice("8bit", f"auto on {gpu.name}: {seed}: this GPU does not compute bf16", device)
    share = weights / gpu.total_bytes
    sizes = f"the weights in bf16 ({weights / GIB:.2f} GiB) take {share:.0%} of its {gpu.total_bytes / GIB:.0f} GiB"
    if share <= GPU_BF16_MEMORY_SHARE:
        reason = f"auto on {gpu.name}: bf16: {sizes} (8-bit only above {GPU_BF16_MEMORY_SHARE:.0%}: it decodes slower)"
        return PrecisionChoice("bf16", reason, device)
    reason = f"auto on {gpu.name}: {seed}: {sizes}, over {GPU_BF16_MEMORY_SHARE:.0%}; 8-bit halves them"
    return PrecisionChoice("8bit", reason, device)


def native_bf16_flags(cpuinfo: str) -> list[str]:
    """The native-bf16 flags (avx512_bf16, amx_bf16, amx_tile) in /proc/cpuinfo text."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def cpu_model_name(cpuinfo: str) -> str:
    """The CPU's name: /proc/cpuinfo's "model name", else lscpu's "Model name", else the platform's."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and value.strip():
            return value.strip()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    for line in lscpu.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache  # once per process: the process stays on its machine
def cpu_bf16_support() -> CpuBf16Support:
    """Whether this machine's CPU computes bf16 natively, the evidence, and the CPU's name."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = ""
    cpu = cpu_model_name(cpuinfo)
    import torch

    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx_tile = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx_tile is not None:
        # torch's own checks (AMX also needs the OS to have enabled the tiles)
        found = [name for name, check in (("avx512_bf16", avx512_bf16), ("AMX", amx_tile)) if check()]
        evidence = " and ".join(found) if found else "no avx512_bf16 or AMX, per torch"
    else:
        found = native_bf16_flags(cpuinfo)
        evidence = " and ".join(found) if found else "no avx512_bf16 or amx flag in /proc/cpuinfo"
    return CpuBf16Support(native=bool(found), evidence=evidence, cpu=cpu)


def resolve_precision(
    requested: str, device: str, model_path: str | Path | None = None, gpu: GpuFacts | None = None
) -> PrecisionChoice:
    """What to load for `requested` on `device` ("cpu" or "cuda") of this machine, and why.

    auto: on CUDA bf16 when `model_path`'s weights fit in `gpu`'s share (`gpu` None: this process's
    GPU), else 8-bit; on CPU bf16 where native, else fp32. Explicit choices are kept; bf16 on a CPU
    without native bf16 is kept with a warning (logged and in the reason).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device != "cpu":
        if requested == "auto":
            return gpu_auto_precision(model_path, gpu if gpu is not None else local_gpu_facts(), device)
        return PrecisionChoice(requested, f"{requested} as asked, on the CUDA GPU", device)
    if requested not in ("auto", "bf16"):
        return PrecisionChoice(requested, f"{requested} as asked, on CPU", device)
    support = cpu_bf16_support()
    asked = "auto on CPU" if requested == "auto" else "bf16 as asked"
    if support.native:
        reason = f"{asked}: {support.cpu} computes bf16 natively ({support.evidence})"
        return PrecisionChoice("bf16", reason, device, support.cpu)
    reason = f"{asked}: {support.cpu} has no native bf16 ({support.evidence}), so bf16 is emulated, much slower"
    if requested == "auto":
        return PrecisionChoice("fp32", reason, device, support.cpu)
    logger.warning("precision %s; fp32 (or auto) is faster here", reason)
    return PrecisionChoice("bf16", reason + " than fp32", device, support.cpu)


def cpu_autocast_bf16(requested: bool | None) -> PrecisionChoice:
    """Training on CPU: bf16 autocast (True), fp32 (False), or None for the rule above (bf16 where native)."""
    return resolve_precision({None: "auto", True: "bf16", False: "fp32"}[requested], "cpu")
