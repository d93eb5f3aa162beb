"""The lean LoRA forward computes PEFT's bits (engines.lora_forward)."""

from __future__ import annotations

import pytest

from ray_app.engines.lora_forward import LEAN_B, install_lean_lora_forward, power_of_two


def adapter(model_dir, folder, alpha: int, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_lean_forward_gives_pefts_logits_bit_for_bit(tiny_model_dir, tmp_path, dtype_name):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ray_app.engines.slm import adapters_in_model_dtype

    dtype = getattr(torch, dtype_name)
    folded = adapter(tiny_model_dir, tmp_path / "a", alpha=8, seed=1)  # scaling 2: folded into lora_B
    kept = adapter(tiny_model_dir, tmp_path / "b", alpha=12, seed=2)  # scaling 3: PEFT's order kept
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    model = PeftModel.from_pretrained(base, folded, adapter_name="a")
    model.load_adapter(kept, adapter_name="b")
    adapters_in_model_dtype(model, "bf16" if dtype == torch.bfloat16 else "fp32")
    model.eval()
    ids = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(0))
    expected = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        expected[name] = logits(model, ids)
    model.base_model.disable_adapter_layers()
    expected["base"] = logits(model, ids)
    model.base_model.enable_adapter_layers()

    layers = install_lean_lora_forward(model)
    assert layers > 0 and layers == sum(1 for module in model.modules() if hasattr(module, LEAN_B))
    lean = next(getattr(module, LEAN_B) for module in model.modules() if hasattr(module, LEAN_B))
    assert lean["a"][1] is True and lean["b"][1] is False
    for name in ("a", "b"):
        model.set_adapter(name)
        assert torch.equal(logits(model, ids), expected[name])
    model.base_model.disable_adapter_layers()  # disabled: PEFT's forward, the base's answer
    assert torch.equal(logits(model, ids), expected["base"])
    model.base_model.enable_adapter_layers()
    model.set_adapter("a")
    assert not torch.equal(expected["a"], expected["b"]) and not torch.equal(expected["a"], expected["base"])


def test_training_mode_and_per_request_adapters_go_to_pefts_forward(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter(tiny_model_dir, tmp_path / "a", alpha=8, seed=1))
    install_lean_lora_forward(model)
    layer = next(module for module in model.modules() if hasattr(module, LEAN_B))
    calls = []
    original = type(layer).forward
    type(layer).forward = lambda self, x, *args, **kwargs: calls.append(kwargs) or original(self, x, *args, **kwargs)
    try:
        x = torch.randn(2, layer.in_features)
        layer.eval()
        layer(x)
        assert calls == []  # the lean path
        layer(x, adapter_names=["default", "default"])
        layer.train()
        layer(x)
        assert len(calls) == 2
    finally:
        type(layer).forward = original


def test_power_of_two():
    assert [power_of_two(value) for value in (0.25, 1.0, 2.0, 16.0)] == [True] * 4
    assert [power_of_two(value) for value in (0.0, 3.0, 0.3, -2.0)] == [False] * 4
