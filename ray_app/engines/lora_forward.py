"""A leaner inference forward for the LoRA layers of an unmerged adapter (PEFT's `lora.Linear`).

An unmerged adapter adds to every target layer of every forward call `lora_B(lora_A(dropout(x))) *
scaling` (PEFT's `lora.Linear.forward`). At a decode step's few rows the arithmetic is small and the
calls around it are not: PEFT's dispatch (adapter bookkeeping, a dtype cast, the dropout module, two
`nn.Linear` module calls, a scale). `lean_lora_forward` computes the same sum with two `F.linear`
calls and, where the scaling is a power of two (the project's alpha 16 / r 64 = 0.25), with the scaling
folded into a copy of `lora_B`'s weight: multiplying by a power of two is exact in every float format
(barring underflow), so the products, their sums and their rounding are the bits PEFT computes.
Other scalings keep PEFT's order (`* scaling` after `lora_B`). Tests compare logits with `torch.equal`.

Measured on the demo SLM with the demo's toolcall adapter (r=64 on all 210 linear layers), bf16, a
forward of 16 rows × 1 token, AMD EPYC with avx512_bf16, 2 cores, 2026-12-03: base 47.7 ms, PEFT
unmerged 81.7 ms, lean 70.6 ms (the adapter's extra time 34 → 23 ms), logits identical. In the decode
engine (`benchmarks/eval_throughput.py --adapter`, 24 toolcall rows, same machine and day) 61.4 → 57.8 s,
24 of 24 answers the same: 1.06×, within that machine's run-to-run spread (one base run 47.6 s and 56.9 s).

Anything PEFT's own forward does beyond that (training mode, disabled or merged adapters, DoRA, a
`lora_B` bias, per-request `adapter_names`, an input in another dtype than the adapter's) goes to
PEFT's forward unchanged. Inference only: evaluation, Serve and the HF generate oracle install it
where they load an unmerged adapter, so all three compute the same thing.
"""

from __future__ import annotations

import math
import types

LEAN_B = "_slm_swap_lean_lora_b"  # the attribute holding each adapter's (weight, folded) for lora_B


def power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return value > 0 and mantissa == 0.5


def lean_lora_forward(self, x, *args, **kwargs):
    """`lora.Linear.forward` for inference; PEFT's where anything beyond the plain sum is asked for."""
    lean = getattr(self, LEAN_B)
    if (
        self.training
        or self.disable_adapters
        or self.merged
        or kwargs.get("adapter_names") is not None
        or any(
            name in self.lora_A and (name not in lean or self.lora_A[name].weight.dtype != x.dtype)
            for name in self.active_adapters
        )
    ):  # decided before any compute: PEFT's forward would compute the base layer again
        return type(self).forward(self, x, *args, **kwargs)
    import torch.nn.functional as F

    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        weight_b, folded = lean[name]
        update = F.linear(F.linear(x, self.lora_A[name].weight), weight_b)
        result = result + (update if folded else update * self.scaling[name])
    return result


def install_lean_lora_forward(model) -> int:
    """Give every plain LoRA linear layer of `model` (a PeftModel) the lean forward; returns how many.
    Call it after the adapters are loaded and in their final dtype (`adapters_in_model_dtype`)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # no peft: no LoRA layers either
        return 0
    installed = 0
    for module in model.modules():
        if type(module) is not LoraLinear:  # quantized and other LoRA layer kinds keep PEFT's forward
            continue
        lean = {}
        for name, layer_b in module.lora_B.items():
            if getattr(layer_b, "bias", None) is not None or module.use_dora.get(name, False):
                continue
            scaling = module.scaling[name]
            folded = isinstance(scaling, (int, float)) and power_of_two(float(scaling))
            weight = layer_b.weight.detach()
            lean[name] = ((weight * scaling).to(weight.dtype) if folded else weight, folded)
        setattr(module, LEAN_B, lean)
        module.forward = types.MethodType(lean_lora_forward, module)
        installed += 1
    return installed
