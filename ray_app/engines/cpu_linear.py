"""Which kernels run the SLM's fp32 or bf16 linear layers on CPU: torch's own (`F.linear`), or oneDNN's
with the weights packed once at load.

`F.linear` in torch's CPU build calls MKL's sgemm for every layer, which repacks the weight at every
call; at a decode step's few rows that packing is most of the work. oneDNN (bundled with torch:
`torch.ops.mkldnn._reorder_linear_weight` once per layer, `_linear_pointwise` per call) keeps the
packed weight. Measured on an AMD EPYC (AVX2 only, 2 cores, 2026-12-02), [rows × 576] × [576 × 1536]
over 60 distinct weights: 16 rows 820 → 592 µs (1.39×), 32 rows 1301 → 713 µs (1.82×), 256 rows
5032 → 3593 µs (1.40×); the decode engine on 32 toolcall test rows 112.9 → 89.6 s (100.7 s in an
earlier run), the same 32 texts.
The same numbers on another CPU can go the other way, so `auto` does not assume: it times both on
the model's own MLP shape (`probe`, under 2 s, once per machine and shape: `machine_probe`) and takes oneDNN only
when it is clearly faster (`ONEDNN_MIN_SPEEDUP`). The two differ in the last bits (~1e-4 absolute on
that shape), so the choice is part of an evaluation's run key, decided on the driver like precision.
bf16 too: torch's `F.linear` runs bf16 on oneDNN already, but reorders the weight at every call. On an
AMD EPYC with avx512_bf16 (2 cores, 2026-12-05), [rows × 576] × [576 × 1536] over 30 weights: 16 rows
174 → 103 µs (1.69×), 32 rows 1.27×, 256 rows 1.13×, the same bits as `F.linear` on every shape there
(fp32 on that CPU: 16 rows 394 → 182 µs). bf16 is probed on its own (`probe(..., "bf16")`) and in the
run key when packed, as fp32 is. GPUs use cuBLAS.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from ray_app.paths import PROJECT_ROOT

CpuLinear = Literal["auto", "torch", "onednn"]
CPU_LINEARS: tuple[str, ...] = ("auto", "torch", "onednn")
ONEDNN_MIN_SPEEDUP = 1.2  # below this the probe's noise could flip the choice between two runs
PROBE_ROWS = 16  # a decode step's rows (the engine's default batch)
PROBE_LAYERS = 30  # distinct weights, so the probe reads them from memory as a forward call does
PROBE_ROUNDS = 8  # passes per side, alternating; each side's best is kept
PROBE_RECORD = PROJECT_ROOT / "storage" / "cpu_linear_probe.json"  # one probe per machine (`machine_probe`)
PROBE_OTHERS_MAX_CORES = 0.25  # other processes' average CPU use beyond which a probe is measured again
PROBE_ATTEMPTS = 4
PROBE_RETRY_WAIT_S = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit
PROBED_THIS_PROCESS: dict[str, tuple[float, float]] = {}  # timings not kept in PROBE_RECORD, by its key
PACKED_PRECISIONS = ("fp32", "bf16")  # what a CPU model may run on packed oneDNN weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuLinearChoice:
    kernels: str  # "torch" or "onednn" (never "auto")
    reason: str

    def run_key_entry(self) -> dict[str, str]:
        """What an evaluation's run key holds of this choice: the kernels when oneDNN's, else nothing, so an
        fp32 run keeps the key it had before oneDNN's kernels existed."""
        return {"cpu_linear": self.kernels} if self.kernels != "torch" else {}


def onednn_available() -> bool:
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_bf16_available() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels (avx512bw/vl/dq, avx_ne_convert or AMX): without them
    torch's bf16 `F.linear` takes its own path and packing a bf16 weight raises."""
    import torch

    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def model_mlp_shape(model_path: Path | None) -> tuple[int, int]:
    """(hidden size, MLP width) from the checkpoint's config.json; the demo SLM's when it has none."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        return int(config["hidden_size"]), int(config["intermediate_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 576, 1536


def probe(hidden: int, width: int, threads: int, precision: str = "fp32") -> tuple[float, float]:
    """Microseconds per [PROBE_ROWS × hidden] × [hidden × width] product in `precision` (fp32 or bf16) on
    `threads` threads: (torch's F.linear, oneDNN packed), each the best of PROBE_ROUNDS passes over
    PROBE_LAYERS distinct weights. The two sides' passes alternate (torch, oneDNN, oneDNN, torch, ...), so
    a busy moment falls on both rather than on whichever was timed second."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(width, hidden, generator=generator).to(dtype) for _ in range(PROBE_LAYERS)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(weight, PROBE_ROWS) for weight in weights]
    rows = torch.randn(PROBE_ROWS, hidden, generator=generator).to(dtype)
    sides = (
        lambda index: torch.nn.functional.linear(rows, weights[index]),
        lambda index: torch.ops.mkldnn._linear_pointwise(rows, packed[index], None, "none", [], ""),
    )
    timings: tuple[list[float], list[float]] = ([], [])

    def one_pass(side: int) -> None:
        started = time.perf_counter()
        for index in range(PROBE_LAYERS):
            sides[side](index)
        timings[side].append((time.perf_counter() - started) / PROBE_LAYERS * 1e6)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the engine's threads (an evaluation actor's), not this process's
    try:
        with torch.no_grad():
            for side in (0, 1):  # warm-up passes, not counted
                sides[side](0)
            for round_index in range(PROBE_ROUNDS):
                for side in (0, 1) if round_index % 2 == 0 else (1, 0):
                    one_pass(side)
    finally:
        torch.set_num_threads(threads_before)
    return min(timings[0]), min(timings[1])


def others_cpu_cores(measure):
    """(`measure()`, the CPU cores other processes used on average while it ran, the cores watched): the
    busy time of the CPUs this process may run on (its affinity; per-CPU lines of /proc/stat, so a
    container limited to a cpuset counts its own CPUs only) less this process's own CPU time, over the
    wall time. 0.0 other cores where /proc/stat cannot be read (not Linux): the measurement is then
    taken as it is."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def busy_seconds() -> float | None:
        try:
            lines = Path("/proc/stat").read_text(encoding="ascii").splitlines()
            per_cpu = {line.split()[0]: [int(field) for field in line.split()[1:9]] for line in lines
                       if line.startswith("cpu") and line[3:4].isdigit()}  # fmt: skip
            ticks = [per_cpu[f"cpu{cpu}"] for cpu in cpus]
        except (OSError, ValueError, KeyError):
            return None
        # busy = all but idle and iowait (guest time is already in user time)
        return sum(sum(fields) - fields[3] - fields[4] for fields in ticks) / CLOCK_TICKS if ticks else None

    busy_before, own_before, wall_before = busy_seconds(), time.process_time(), time.perf_counter()
    result = measure()
    busy_after, own_after, wall_after = busy_seconds(), time.process_time(), time.perf_counter()
    if busy_before is None or busy_after is None:
        return result, 0.0, len(cpus)
    others = (busy_after - busy_before) - (own_after - own_before)
    return result, max(0.0, others) / max(wall_after - wall_before, 1e-9), len(cpus)


def quiet_probe(hidden: int, width: int, threads: int, precision: str) -> tuple[tuple[float, float], bool]:
    """`probe`'s timings taken while other processes left the probe's `threads` cores free (they may use
    the cores beyond those, and PROBE_OTHERS_MAX_CORES more), and True; after PROBE_ATTEMPTS busy probes
    (PROBE_RETRY_WAIT_S apart), the least disturbed one's timings and False. On 2 cores another
    process's work decides the comparison: during a fresh clone's `make demo` (AMD EPYC, AVX2 only,
    2026-12-06) a probe timed oneDNN at 652 µs beside torch's 688 while Ray started its workers, and on
    a quiet machine minutes later at 375 µs beside 627; the choice was kept for the machine, and every
    evaluation after it ran torch's slower kernels."""
    attempts = []
    for attempt in range(PROBE_ATTEMPTS):
        timings, others, cores = others_cpu_cores(lambda: probe(hidden, width, threads, precision))
        disturbance = others - max(0, cores - threads)  # what other processes took from the probe's cores
        if disturbance <= PROBE_OTHERS_MAX_CORES:
            return timings, True
        attempts.append((disturbance, timings))
        logger.info(
            "cpu linear probe %d of %d: other processes used %.2f of %d CPU cores meanwhile; probing again in %.0f s",
            attempt + 1, PROBE_ATTEMPTS, others, cores, PROBE_RETRY_WAIT_S,
        )  # fmt: skip
        if attempt + 1 < PROBE_ATTEMPTS:
            time.sleep(PROBE_RETRY_WAIT_S)
    return min(attempts)[1], False


PROBE_RECORD_ADAPTER = TypeAdapter(dict[str, tuple[float, float]])


def onednn_clearly_faster(plain_us: float, onednn_us: float) -> bool:
    """The rule `auto` takes oneDNN's packed kernels by: at least ONEDNN_MIN_SPEEDUP as fast as torch's."""
    return plain_us >= ONEDNN_MIN_SPEEDUP * onednn_us


def machine_probe(hidden: int, width: int, threads: int, precision: str = "fp32") -> tuple[float, float]:
    """`probe`'s timings, measured once per machine: kept in PROBE_RECORD under this CPU, torch version,
    thread count, shape and precision (fp32's key has no suffix: the records written before bf16 was
    probed stay valid). A probe near the threshold could otherwise choose differently in two runs,
    and a resumed evaluation would not find its own run key (it would start over, correctly but slowly).
    Only a quiet probe is kept (`quiet_probe`: no other process busy meanwhile), and one that favours
    oneDNN is taken twice and the pair less favourable to it kept, so one busy moment does not decide for
    good either way.
    A record that is not {key: [torch µs, oneDNN µs]} is measured again and replaced."""
    import torch

    from ray_app.atomic_files import atomic_write_json
    from ray_app.engines.precision import cpu_bf16_support

    key = f"{cpu_bf16_support().cpu} | torch {torch.__version__} | {threads} threads | {hidden}x{width}"
    key += "" if precision == "fp32" else f" | {precision}"
    try:
        record = PROBE_RECORD_ADAPTER.validate_json(PROBE_RECORD.read_bytes())
    except (OSError, ValidationError):
        record = {}
    if key in record:
        return record[key]
    if key in PROBED_THIS_PROCESS:  # probed in this process but not kept (busy, or the record unwritable)
        return PROBED_THIS_PROCESS[key]
    timings, quiet = quiet_probe(hidden, width, threads, precision)
    if quiet and onednn_clearly_faster(*timings):
        # confirmed by a second probe, the pair less favourable to oneDNN kept: a fresh clone's CI once timed
        # torch's threaded F.linear at 16 ms where it takes 4.7 µs (a busy moment, it seems), chose oneDNN and
        # kept that (AMD EPYC, 2026-12-06)
        second, quiet = quiet_probe(hidden, width, threads, precision)
        timings = min(timings, second, key=lambda pair: pair[0] / pair[1])
    if not quiet:  # decides this run; the next one probes again
        PROBED_THIS_PROCESS[key] = timings
        logger.warning(
            "cpu linear probe: other processes kept the CPU busy through %d probes; %s decides this run only",
            PROBE_ATTEMPTS, timings,
        )  # fmt: skip
        return timings
    try:
        atomic_write_json(PROBE_RECORD, {**record, key: list(timings)})
    except OSError as error:  # a read-only checkout still runs; the next run probes again
        PROBED_THIS_PROCESS[key] = timings
        logger.warning("could not keep the cpu linear probe in %s: %s", PROBE_RECORD, error)
    return timings


def resolve_cpu_linear(
    requested: str, precision: str, device: str, model_path: Path | None, threads: int | None = None
) -> CpuLinearChoice:
    """What runs an fp32 or bf16 CPU model's linear layers for `requested`, on this machine, and why. `auto`
    probes in that precision on `threads` threads, the engine's (None: this process's torch threads)."""
    if requested not in CPU_LINEARS:
        raise ValueError(f"cpu linear kernels must be one of {', '.join(CPU_LINEARS)}, got {requested!r}")
    if device != "cpu" or precision not in PACKED_PRECISIONS:
        where = precision if device == "cpu" else f"{precision} on {device}"
        return CpuLinearChoice(
            "torch", f"torch: only an fp32 or bf16 model on CPU packs its weights (this one: {where})"
        )
    if requested == "torch":
        return CpuLinearChoice("torch", "torch as asked")
    if not onednn_available():
        if requested == "onednn":
            raise ValueError("cpu linear kernels onednn: this torch build has no oneDNN (mkldnn)")
        return CpuLinearChoice("torch", "auto: this torch build has no oneDNN (mkldnn)")
    if precision == "bf16" and not onednn_bf16_available():
        if requested == "onednn":
            raise ValueError(
                "cpu linear kernels onednn: oneDNN has no bf16 kernels for this CPU (it needs avx512bw, avx512vl "
                "and avx512dq, avx_ne_convert or AMX); use fp32 or --cpu-linear torch"
            )
        return CpuLinearChoice("torch", "auto: oneDNN has no bf16 kernels for this CPU")
    if requested == "onednn":
        return CpuLinearChoice("onednn", "onednn as asked")
    hidden, width = model_mlp_shape(model_path)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    plain, onednn = machine_probe(hidden, width, threads, precision)
    shape = f"{PROBE_ROWS}x{hidden}x{width}" + ("" if precision == "fp32" else f" {precision}")
    logger.info("cpu linear probe %s: torch %.0f us, oneDNN packed %.0f us", shape, plain, onednn)
    # the reason names the rule, not the timings, so records of two runs that chose alike are alike
    if onednn_clearly_faster(plain, onednn):
        return CpuLinearChoice(
            "onednn", f"auto: a probe timed oneDNN's packed kernels ≥ {ONEDNN_MIN_SPEEDUP}x as fast ({shape})"
        )
    return CpuLinearChoice(
        "torch", f"auto: a probe timed oneDNN's packed kernels under {ONEDNN_MIN_SPEEDUP}x as fast ({shape})"
    )


def pack_linear_weights(model) -> int:
    """Every fp32 or bf16 `nn.Linear` of `model` (a LoRA layer's base and adapter matrices included) runs
    on oneDNN with its weight packed now (bf16 only where oneDNN has bf16 kernels for this CPU); returns
    how many. Call it on the final module (after any merge
    or copy: a copied module would share the packed weight of its original). The module's `weight`
    stays as it is (tied embeddings, PEFT and `state_dict` read it); the packed copy costs its size
    again in memory."""
    import torch

    dtypes = (torch.float32, torch.bfloat16) if onednn_bf16_available() else (torch.float32,)
    packed_layers = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module.weight.dtype not in dtypes:
            continue
        if module.weight.device.type != "cpu" or getattr(module, "_onednn_packed", False):
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), PROBE_ROWS)
        module.forward = _packed_forward(packed, module.bias, module.out_features)
        module._onednn_packed = True
        packed_layers += 1
    return packed_layers


def _packed_forward(packed, bias, out_features: int):
    import torch

    def forward(inputs):
        leading = inputs.shape[:-1]
        flat = inputs.reshape(-1, inputs.shape[-1]).contiguous()
        return torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "").reshape(*leading, out_features)

    return forward
