"""Which kernel runs a CPU decode step's row attention: torch's flash kernel once per row, or our compiled
kernel (`decode_attention.c`) once per layer for all rows.

A decode step's attention reads every live row's keys and values: at 32 rows of ~600 columns that is
~880 MB per step in fp32, more than the weights. torch's CPU flash kernel, called once per row (one
query position, `per` query heads per key head), splits its work over (batch × key heads) = 3 items
for the demo SLM, so on 2 threads one thread idles a third of the time, and each of the ~1,000 calls
per step costs its own dispatch, slices and scratch. Measured (Intel(R) Xeon(R) Processor with
avx512_bf16 and AMX, 2 cores, fp32, 30 layers × 32 rows × 3 key heads of 420-720 columns, out of
cache, 2026-12-04): torch's flash per row 126-137 ms per step (6.1-6.7 GB/s), the compiled kernel
79-80 ms (10.5-10.6 GB/s; `torch.sum` over the same bytes reads 19-20 GB/s); outputs within 7e-7 of
flash's. In the engine, the 50 toolcall test rows (fp32, 32 rows at a time, ~18 decoding per step,
same machine and day): a step's attention 61 → 45 ms, a step 145 → 136 ms, 66.6 → 63.8 s in all, the
same 50 answers. No library we can install does this on CPU for torch tensors (intel-extension-for-pytorch's
paged-attention kernels stop at torch 2.8; vLLM's CPU backend is a whole server), so it is ours, and
small: one C file, a pass over the keys and a pass over the values per (row, key head), fp32 sums.

fp32 and bf16. A bf16 row's keys, values and query are widened to fp32 as they are read, summed in fp32,
and its output rounded to bf16 once; torch's bf16 flash kernel rounds the softmax weights to bf16 before
it multiplies them into the values, so the two kernels' bf16 answers differ, as any two bf16 kernels'
do, ours a little closer to fp32's: of the 100 test rows (50 per track; AMD EPYC with avx512_bf16, 2
cores, 2026-12-05) torch's kernel gave fp32's answer on 33 (toolcall 16, structured 17), ours on 39 (15
and 24). bf16 kept torch's kernel until then, when it had been measured on the Intel Xeon only, where it
saved less (105 → 98 ms per step on the toolcall rows). Where a step's rows have few columns of their
own, as on an agent load whose tool signatures are a shared prefix, torch's per-row call is mostly its
fixed cost: there (same AMD machine, bf16, 64 support-desk requests, 16 rows) a step took 67.1 ms with
torch's kernel and 54.2 ms with ours (190.7 → 225.8 completion tok/s in one process); the 50 toolcall
test rows 78.3 → 62.1 s.

Built for AVX-512, the kernel computes 16 columns' scores at a time in vectors of 16 floats
(`decode_attention.c`: the same additions in the same order as a column alone) and reads a row's shared
prompt prefix from its group's copy in the row's own pass (`row_attention.RowSpans.shared`), so a row
gives the bytes it gives alone and a layer takes one call, no flash call and no merge. Same AMD machine,
2026-12-06: 30 layers × 16 rows × 3 key heads, 60 columns of their own 3.5 → 1.7 ms per step in bf16
(4.1 → 2.4 fp32), 440 columns 18.0-27.1 → 7.4-8.6 ms (20.9 → 14.0 fp32); the agent load in one process
53 → 43 ms per step, 247 → 309 completion tok/s; the 50 toolcall test rows in bf16 39.8 s (44.5 s the day
before), fp32 still the same 50 answers as HF generate. Built for AVX2 the same vectors ran 2× slower than a column at
a time (16 registers of 8 floats: spills, shuffles across pairs), so an AVX2 build has a path of its
own in vectors of 8 floats: each column's two 8-lane halves added, then 8 columns' pairwise sums across
at once, the column loops' additions in their order (the same bytes, fp32 and bf16: tests). On the
AVX2-only AMD EPYC (2 cores, fp32, 2026-12-06) a layer's call for 32 rows × 3 key heads took 3.1 → 1.6-1.9
ms at 550 columns and 1.1 → 0.5 ms at 200; the 50 toolcall test rows in one process 135-140 → 121 s,
the same 50 answers. There a group's shared prefix stays on torch's GEMM-backed flash call, merged by
log-sum-exps (`CompiledRowAttention.reads_shared_prefixes`: the AVX-512 path only).

`auto` compiles it with the machine's C compiler (`CC`, else `cc`, `gcc` or `clang`) for this CPU
(`-march=native`) the first time a process needs it (~2 s; an AVX2 build leaves the vector path's code
out: compiled in, emulated in 8-wide registers though never run, it took GCC 19.3 s at -O3 on the AMD EPYC
without AVX-512, 2026-12-06, the first evaluation of a fresh clone waiting on it), keeps the library under
storage/kernels/ keyed by the source, compiler and CPU, and takes torch's kernel when there is no
compiler or the build fails (the reason is recorded). `compiled` fails instead; `torch` never builds.
clang compiles the source alike (its own shuffle builtin; the tests build it where clang is installed:
fp32 outputs within 1.5e-7 of GCC's build, bf16 the same bytes, AMD EPYC, 2026-12-06), but its OpenMP
is LLVM's libomp, not torch's libgomp, so a clang-built library is refused at load (two runtimes) and
torch's kernel runs, saying so.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ray_app.paths import PROJECT_ROOT

DecodeAttention = Literal["auto", "torch", "compiled"]
DECODE_ATTENTIONS: tuple[str, ...] = ("auto", "torch", "compiled")
SOURCE = Path(__file__).with_name("decode_attention.c")
KERNEL_ROOT = PROJECT_ROOT / "storage" / "kernels"
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120
# The models' precisions the library has a function for: precision → (torch dtype name, C function).
KERNEL_FUNCTIONS = {"fp32": ("float32", "decode_attention_f32"), "bf16": ("bfloat16", "decode_attention_bf16")}

logger = logging.getLogger(__name__)


class DecodeAttentionError(RuntimeError):
    pass


class CompiledRowAttention:
    """The compiled kernel (fp32 and bf16); `supports` says whether it takes these tensors."""

    def __init__(self, library: ctypes.CDLL, path: Path):
        import torch

        self.path = path
        pointer, integer = ctypes.c_void_p, ctypes.c_int64
        self._functions = {}
        for dtype_name, name in KERNEL_FUNCTIONS.values():
            function = getattr(library, name)
            function.argtypes = [pointer, pointer, pointer, integer, integer, pointer, integer, integer, integer,
                                 integer, integer, ctypes.c_float, pointer, pointer]  # fmt: skip
            function.restype = None
            self._functions[getattr(torch, dtype_name)] = function
        # built with the vector path (AVX-512): a row reads a shared prefix in its own pass faster than torch's
        # flash call for the group and the merge; without it, slower (`row_attention.row_attention_forward`)
        self.reads_shared_prefixes = bool(library.decode_attention_vector_path())

    def supports(self, key) -> bool:
        return (key.device.type == "cpu" and key.dtype in self._functions
                and key.stride(-1) == 1 and key.stride(-2) == key.shape[-1])  # fmt: skip

    def __call__(self, grouped, key, value, scaling: float, spans, output, log_sum_exp=None) -> None:
        """Row attention for the rows in `spans` into `output` ([slots, key heads, query heads per key head,
        head dim], contiguous, like `grouped`), and each row's log-sum-exp into `log_sum_exp` (fp32 [slots,
        key heads, per]) when given. `spans`: [rows, 5] int64, contiguous: a row's slot and first column of its
        own, then the slot, first column and length of a prefix it reads from another row's columns before
        its own (length 0: none; `RowSpans.tensor`). Slots not in `spans` are left as they are."""
        import torch

        if key.stride() != value.stride():
            raise ValueError("keys and values must share one layout")
        if not output.is_contiguous() or spans.dtype != torch.int64 or not spans.is_contiguous():
            raise ValueError("the kernel writes a contiguous output and reads contiguous int64 spans")
        if spans.dim() != 2 or spans.shape[1] != 5:
            raise ValueError(f"spans must be [rows, 5] (slot, start, prefix slot, prefix start, prefix length), "
                             f"got {list(spans.shape)}")  # fmt: skip
        if not grouped.dtype == key.dtype == value.dtype == output.dtype:
            raise ValueError("queries, keys, values and output must share one dtype")
        slots, key_heads, per, head_dim = grouped.shape
        grouped = grouped.contiguous()
        self._functions[key.dtype](grouped.data_ptr(), key.data_ptr(), value.data_ptr(), key.stride(0), key.stride(1),
                 spans.data_ptr(), spans.shape[0], key.shape[2], key_heads, per, head_dim, float(scaling),
                 output.data_ptr(), None if log_sum_exp is None else log_sum_exp.data_ptr())  # fmt: skip


@dataclass(frozen=True)
class DecodeAttentionChoice:
    kernel: str  # "compiled" or "torch" (never "auto")
    reason: str
    compiled: CompiledRowAttention | None = None


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def cpu_identity() -> str:
    """The CPU's model name and flags (the library is built for them: -march=native)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags")), "")
    return f"{model} | {flags}"


def library_path(compiler_path: str, root: Path = KERNEL_ROOT) -> Path:
    version = subprocess.run([compiler_path, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(COMPILE_FLAGS).encode(), cpu_identity().encode(),
                 platform.machine().encode()):  # fmt: skip
        digest.update(part + b"\0")
    return root / f"decode_attention-{digest.hexdigest()[:16]}.so"


def build(compiler_path: str, target: Path) -> Path:
    """Compile `SOURCE` into `target` (written whole, then renamed: processes building at once each write
    their own file, and a reader never sees half a library)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        command = [compiler_path, *COMPILE_FLAGS, str(SOURCE), "-o", str(partial_path), "-lm"]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if finished.returncode != 0:
            raise DecodeAttentionError(f"{' '.join(command)} failed: {finished.stderr.strip()[-800:]}")
        os.replace(partial_path, target)
    finally:
        partial_path.unlink(missing_ok=True)
    return target


def openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (file names), from /proc/self/maps (empty where none)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8")
    except OSError:
        return set()
    names = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if "/" in line}
    return {name for name in names if name.startswith(("libgomp", "libiomp", "libomp"))}


@functools.cache  # once per process: the process stays on its machine
def load_compiled(root: Path = KERNEL_ROOT) -> CompiledRowAttention:
    """The kernel for this machine, built the first time (kept in `root`, else in a temporary folder
    when `root` cannot be written). Raises DecodeAttentionError with the reason when it cannot be.
    It must share torch's OpenMP runtime (torch loads its own libgomp first, and the library's
    libgomp.so.1 resolves to it): a second runtime would start a second team of threads on the same
    cores, so a torch built on another runtime (Intel's libiomp) keeps torch's kernel."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime before the library asks for one)

    compiler_path = compiler()
    if compiler_path is None:
        raise DecodeAttentionError("no C compiler (set CC, or install cc, gcc or clang)")
    try:
        target = library_path(compiler_path, root)
        if not target.exists():
            try:
                build(compiler_path, target)
            except OSError:  # a read-only checkout
                target = build(compiler_path, Path(tempfile.mkdtemp(prefix="slm-swap-kernels-")) / target.name)
        kernel = CompiledRowAttention(ctypes.CDLL(str(target)), target)
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        raise DecodeAttentionError(f"could not build or load {SOURCE.name}: {error}") from error
    runtimes = openmp_runtimes()
    if len(runtimes) > 1:
        hint = "; clang links its own (libomp): CC=gcc builds on torch's libgomp" if "clang" in compiler_path else ""
        raise DecodeAttentionError(
            f"torch and {SOURCE.name} would run two OpenMP runtimes ({', '.join(sorted(runtimes))}){hint}"
        )
    return kernel


def resolve_decode_attention(requested: str, precision: str, device: str) -> DecodeAttentionChoice:
    """Which kernel runs a model's decode-step row attention, on this machine, and why: the compiled one
    for an fp32 or bf16 model on CPU, as the run records say."""
    if requested not in DECODE_ATTENTIONS:
        raise ValueError(f"decode attention must be one of {', '.join(DECODE_ATTENTIONS)}, got {requested!r}")
    if device != "cpu":
        return DecodeAttentionChoice("torch", f"torch: row attention is for CPU models (this one: {device})")
    if precision not in KERNEL_FUNCTIONS:
        kernel_precisions = " and ".join(KERNEL_FUNCTIONS)
        return DecodeAttentionChoice(
            "torch", f"torch: the compiled kernel is for {kernel_precisions} models (this one: {precision})"
        )
    if requested == "torch":
        return DecodeAttentionChoice("torch", "torch as asked")
    try:
        kernel = load_compiled()
    except DecodeAttentionError as error:
        if requested == "compiled":
            raise
        logger.warning("decode attention: torch's flash kernel per row (%s)", error)
        return DecodeAttentionChoice("torch", f"auto: {error}")
    return DecodeAttentionChoice("compiled", f"{requested}: {SOURCE.name} built for this CPU", kernel)
