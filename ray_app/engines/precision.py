"""The one precision setting of eval, training and serving, and the rule that resolves `auto`.

`auto` on a CUDA GPU loads 8-bit (bitsandbytes), the seed's choice. `auto` on CPU is bf16 where the
CPU computes bf16 natively (the avx512_bf16 or AMX instructions), else fp32: without them torch
emulates bf16 and a matmul is ~50x slower (64x576x1536 on an AVX2-only EPYC: 146.8 ms bf16, 2.7 ms
fp32). Training's CPU autocast (`cpu_autocast_bf16`) follows the same rule.

Detection asks torch (`torch.cpu._is_avx512_bf16_supported`, `torch.cpu._is_amx_tile_supported`),
else /proc/cpuinfo's flags. It runs on the machine that loads the model (the Ray actor, the train
worker, the Serve replica), so the choice is never baked into a config made elsewhere.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "fp32", "bf16", "8bit", "4bit"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "8bit", "4bit")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo flags

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


def resolve_precision(requested: str, device: str) -> PrecisionChoice:
    """What to load for `requested` on `device` ("cpu" or "cuda") of this machine, and why.

    auto: 8-bit on CUDA; on CPU bf16 where native, else fp32. Explicit choices are kept; bf16 on a CPU
    without native bf16 is kept with a warning (logged and in the reason).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device != "cpu":
        if requested == "auto":
            return PrecisionChoice("8bit", "auto on a CUDA GPU: 8-bit (bitsandbytes), the seed's choice", device)
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
