"""Two things that make LoRA fine-tuning on a CPU faster without changing the recipe.

Measured on the demo's toolcall rows (SmolLM2-135M, LoRA r=64 on every linear layer, bf16 autocast,
1 row x 2 accumulated, 8 rows; Intel(R) Xeon(R) Processor with avx512_bf16/AMX, 2 cores), a training
step spent 23% of its time in the LM head and 16% drawing dropout masks:

1. **Score only the labelled positions.** TRL's SFTTrainer computes the loss through its fused LM
   head, which projects the hidden states onto the 49k-token vocabulary in tiles and folds them into
   log-probabilities, entropy and top-1 hits. On CUDA/XPU it scores only the positions that carry a
   label; on every other device it scores all of them, so that tile shapes stay fixed for
   compilers such as Neuron's (`trl/trainer/utils.py`, `compact = _use_triton(device)`). On a CPU
   nothing is compiled, and a toolcall row is ~90% prompt (labels -100): the head, its softmax
   statistics and their backward ran on ~10x the positions the loss uses. `score_labelled_positions_only`
   makes TRL take its compact path on CPU as well: the same per-token log-probabilities on the
   labelled positions and zero elsewhere, as on a GPU. 8 toolcall rows: 32.1 s -> 24.3 s; the first
   step's loss is the same to 5 digits, later ones differ in the 4th (summation order in the head's
   backward GEMMs).
2. **Cheaper dropout masks.** LoRA's dropout (p=0.1 on the input of each of the 210 adapted layers)
   used `torch.nn.Dropout`, whose CPU kernel draws one Bernoulli sample per element: 1.6 ms for a
   458 x 576 input, more than the LoRA matmuls it guards. `CpuDropout` takes four 16-bit slices from
   each 64-bit random word instead (15 bits used: the word's top bit is always 0), so one draw
   covers four elements: 0.73 ms for the same input, backward included 0.87 vs 1.78 ms. The mask
   drops an element with probability round(p * 32768) / 32768 (0.100006 for p=0.1) and scales the
   kept ones by the exact inverse of the keep probability, so the expected output is the input, as
   with `nn.Dropout`. The draws come from torch's default generator: seeded by the run, restored
   with the Trainer's RNG state on resume. GPUs keep PEFT's `nn.Dropout` (their generator is fast).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

MASK_BITS = 15  # bits of each 16-bit slice that are uniform (the top slice's sign bit never is)
MASK_LEVELS = 1 << MASK_BITS


def score_labelled_positions_only() -> bool:
    """Make TRL's fused LM head score only labelled positions on CPU too (point 1 above).

    Affects one decision in `trl.trainer.utils` (its module-level `_use_triton`, read only where the
    fused head chooses between the compact and the all-positions path); the Triton kernels keep
    their own check. Returns False, with a warning, when the installed TRL has no such switch: then
    training is correct, only slower."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        log.warning("TRL has no trl.trainer.utils._use_triton: its fused LM head scores every position on CPU")
        return False
    if getattr(original, "compact_on_cpu", False):
        return True

    def compact_on_cpu(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.compact_on_cpu = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu
    return True


class CpuDropout(torch.nn.Module):
    """Inverted dropout with masks from 16-bit slices of 64-bit random words (point 2 above)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.drop_levels = round(p * MASK_LEVELS)  # a slice below this is dropped
        self.keep_scale = MASK_LEVELS / (MASK_LEVELS - self.drop_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_levels == 0:
            return x
        count = x.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_()
        slices = words.view(torch.int16)[:count].view(x.shape)
        keep = (slices & (MASK_LEVELS - 1)) >= self.drop_levels
        # The scale multiplies the values, not the mask: in bf16 a mask of 1.1111 rounds to 1.1094, which
        # would scale every kept element 0.16% low; rounding each product is unbiased. (PEFT casts a LoRA
        # layer's input to its fp32 weights' dtype before the dropout, so the demo's training is fp32 here.)
        return x * keep * self.keep_scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cpu_dropout(model: torch.nn.Module) -> int:
    """Replace the LoRA layers' `nn.Dropout` modules with `CpuDropout` of the same p; return how many."""
    from peft.tuners.lora import LoraLayer

    replaced = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                replacement = CpuDropout(dropout.p)
                replacement.train(dropout.training)
                module.lora_dropout[name] = replacement
                replaced += 1
    return replaced
