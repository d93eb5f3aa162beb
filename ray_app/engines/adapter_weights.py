"""How a LoRA adapter's weights are applied: merged into a copy of the base, or beside the base.

- `merged`: each adapter gets its own copy of the base with `W + scale·B·A` folded into every target
  layer (PEFT's `merge_and_unload`, the delta computed in fp32 and rounded once into the base's
  dtype). A forward call costs what the base's costs. Memory: one more copy of the model per adapter.
- `unmerged`: one PEFT model holds every adapter beside the one base (`set_adapter` between calls).
  Each of the demo SLM's 210 LoRA layers adds a dropout, two skinny matmuls (K or N = 64), a scale and
  an add to every forward call: measured on the demo SLM (bf16, 2026-12-02, Intel(R) Xeon(R)
  Processor, 2 cores), a decode step of 12 rows 132 ms vs 89 ms for the base, a 25-34 token prefill
  piece ~100 ms vs ~55 ms. Memory: the adapters only.

`auto` merges an fp32 base when the copies fit in half of the memory free on the device at load time;
otherwise unmerged. Not bf16: a LoRA delta is mostly far below half a bf16 step of the weight it is
added to, so rounding the merged weight to bf16 drops much of what training learned (the demo's
structured adapter, bf16, 50 test rows: valid JSON 47 unmerged vs 32 merged, exact 19 vs 12); an
explicit `merged` is honoured with that warning. Not 4/8-bit: the base cannot take the delta without
requantizing. Evaluation and Serve resolve it with the same rule on the machine that loads the model,
and the run records what was chosen and why, as for precision. The HF generate oracle
(`engines.slm.load_model_and_tokenizer`) applies an adapter by the same rule, so tests compare like
with like.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AdapterWeights = Literal["auto", "merged", "unmerged"]
ADAPTER_WEIGHTS: tuple[str, ...] = ("auto", "merged", "unmerged")
MERGEABLE_PRECISIONS = ("fp32", "bf16")  # a merged bf16 weight loses much of the delta: never auto

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterWeightsChoice:
    merged: bool
    reason: str

    @property
    def name(self) -> str:
        return "merged" if self.merged else "unmerged"


def model_bytes(model) -> int:
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def checkpoint_bytes(model_path: Path) -> int:
    """A model's size before it is loaded: its weight files (an upper bound for a bf16 load of an fp32
    checkpoint). Where the run key needs the choice before any actor loads the model."""
    files = [*Path(model_path).glob("*.safetensors"), *Path(model_path).glob("*.bin")]
    return sum(path.stat().st_size for path in files)


def free_memory_bytes(device: str) -> int:
    """Memory free on the device now: the GPU's (torch) or the machine's available RAM (psutil)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def resolve_adapter_weights(
    requested: str, precision: str, device: str, copy_bytes: int, adapters: int
) -> AdapterWeightsChoice:
    """What `requested` means for `adapters` adapters on a base of `copy_bytes`, loaded in `precision`."""
    if requested not in ADAPTER_WEIGHTS:
        raise ValueError(f"adapter weights must be one of {', '.join(ADAPTER_WEIGHTS)}, got {requested!r}")
    if requested == "unmerged":
        return AdapterWeightsChoice(False, "unmerged as asked")
    if precision not in MERGEABLE_PRECISIONS:
        if requested == "merged":
            raise ValueError(f"merged adapters need an fp32 or bf16 base; this one is loaded {precision}")
        return AdapterWeightsChoice(False, f"auto: a {precision} base cannot take a merged delta")
    if requested == "merged":
        if precision == "bf16":
            reason = "merged as asked; in bf16 the merged weights round away much of each adapter's delta"
            logger.warning("adapter weights %s (unmerged keeps it)", reason)
            return AdapterWeightsChoice(True, reason)
        return AdapterWeightsChoice(True, "merged as asked")
    if precision == "bf16":
        return AdapterWeightsChoice(False, "auto: a bf16 base would round away much of each adapter's delta if merged")
    needed, free = adapters * copy_bytes, free_memory_bytes(device)
    if needed > free // 2:
        need, have = f"{needed / 2**20:.0f} MiB", f"{free / 2**20:.0f} MiB"
        return AdapterWeightsChoice(False, f"auto: {adapters} merged copies need {need}, over half of the {have} free")
    return AdapterWeightsChoice(
        True, f"auto: a {precision} base, {adapters} merged copies of {copy_bytes / 2**20:.0f} MiB fit in memory"
    )


def merged_into(model, adapter_path: Path):
    """`model` with the adapter folded into its weights (in place; returns the plain model)."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    merged.eval()
    return merged


def merged_copy(base, adapter_path: Path):
    """A copy of `base` with the adapter folded into its weights; the base is left as it is."""
    return merged_into(copy.deepcopy(base), adapter_path)
