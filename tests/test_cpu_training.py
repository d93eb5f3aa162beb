"""What makes LoRA training on a CPU faster (`train/cpu_training.py`): TRL's fused LM head scores only
the labelled positions, and LoRA's dropout draws its masks from 16-bit slices of random words."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ray_app.train.cpu_training import MASK_LEVELS, CpuDropout, score_labelled_positions_only


def test_cpu_dropout_drops_p_of_the_elements_and_keeps_the_expected_value():
    torch.manual_seed(42)
    dropout = CpuDropout(0.1)
    ones = torch.ones(1000, 997)  # not a multiple of 4: the last random word is used in part
    out = dropout(ones)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # 997,000 draws: a standard error of 0.0003
    assert out.unique().tolist() == [0.0, pytest.approx(dropout.keep_scale, rel=1e-7)]
    assert abs(out.mean().item() - 1.0) < 0.003  # inverted dropout: the expected output is the input
    assert dropout.keep_scale == MASK_LEVELS / (MASK_LEVELS - round(0.1 * MASK_LEVELS))


def test_cpu_dropout_keeps_the_expected_value_in_bf16_too():
    torch.manual_seed(42)
    dropout = CpuDropout(0.1)
    x = (torch.rand(4000, 1000) + 0.5).to(torch.bfloat16)  # positive, so the sums below are far from 0
    out = dropout(x).double()
    kept = out != 0
    ratio = out[kept].sum() / x.double()[kept].sum()  # the kept elements' scale, on average
    assert abs(ratio.item() / dropout.keep_scale - 1) < 3e-4  # a mask of bf16(1.1111) = 1.1094 is 1.6e-3 low


def test_cpu_dropout_is_the_identity_in_eval_mode_and_seeded_in_training():
    x = torch.randn(3, 50, 64)
    dropout = CpuDropout(0.1)
    torch.manual_seed(42)
    first = dropout(x)
    torch.manual_seed(42)
    assert torch.equal(first, dropout(x))
    assert not torch.equal(first, dropout(x))  # the next draw is another mask
    dropout.eval()
    assert dropout(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        CpuDropout(1.0)


def test_cpu_dropout_passes_the_gradient_through_the_kept_elements_only():
    torch.manual_seed(42)
    x = torch.randn(64, 64, requires_grad=True)
    out = CpuDropout(0.25)(x)
    out.sum().backward()
    kept = out != 0
    scale = torch.tensor(CpuDropout(0.25).keep_scale, dtype=torch.float32)
    assert torch.equal(x.grad[kept], scale.expand(int(kept.sum())))  # the kept ones' scale, exactly
    assert torch.equal(out[kept], x[kept] * scale) and torch.all(x.grad[~kept] == 0)


def test_cpu_training_scores_only_labelled_positions_and_uses_cpu_dropout(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
):
    """The SFTTrainer built for a CPU worker: every LoRA dropout is a `CpuDropout` with the configured p,
    and the fused LM head gets only the positions whose label is not -100 (the completion's tokens)."""
    import trl.trainer.utils as trl_utils

    from ray_app.data.rows import Row
    from ray_app.prompts import toolcall_prompt
    from ray_app.train.sft_worker import build_sft_trainer
    from tests.sample_tools import WEATHER

    rows = [
        Row(
            toolcall_prompt([WEATHER], f"Weather in city {i}?"),
            f'<tool_call name="get_weather">{{"city": "C{i}"}}</tool_call>',
        )
        for i in range(2)
    ]
    config = {
        "backend": "peft", "quantization": "none",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"},
        "learning_rate": 2e-4, "epochs": 1.0, "max_length": 512, "per_device_batch_size": 1,
        "gradient_accumulation_steps": 1, "max_steps": 1, "save_steps": 100, "cpu_bf16": False, "seed": 42,
        "model_path": str(tiny_model_dir), "train_rows": [row.to_json() for row in rows], "val_rows": [],
    }  # fmt: skip
    trainer, _ = build_sft_trainer(config, torch.device("cpu"), tmp_path / "hf", [], show_progress=False)
    dropouts = [m for m in trainer.model.modules() if isinstance(m, (CpuDropout, torch.nn.Dropout))]
    assert dropouts and all(isinstance(m, CpuDropout) and m.p == 0.1 for m in dropouts)
    assert score_labelled_positions_only()  # already in place: says so again

    scored: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction
    original_apply = chunked.apply

    def counting_apply(hidden, *args):
        scored.append(hidden.shape[0])
        return original_apply(hidden, *args)

    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["input_ids"].shape[1] - 1
    monkeypatch.setattr(chunked, "apply", counting_apply)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert scored == [labelled] and torch.isfinite(loss)
