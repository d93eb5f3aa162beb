"""How adapters are applied (merged copies or beside the base), and the lm_head's input layout."""

from __future__ import annotations

import pytest

from ray_app.engines.adapter_weights import resolve_adapter_weights

MIB = 2**20


@pytest.fixture
def free_memory(monkeypatch):
    def set_free(mib: int) -> None:
        monkeypatch.setattr("ray_app.engines.adapter_weights.free_memory_bytes", lambda device: mib * MIB)

    return set_free


def test_auto_merges_an_fp32_base_when_the_copies_fit(free_memory):
    free_memory(4096)
    choice = resolve_adapter_weights("auto", "fp32", "cpu", 540 * MIB, 2)
    assert choice.merged and choice.name == "merged"
    assert "2 merged copies of 540 MiB fit" in choice.reason


def test_auto_never_merges_into_bf16_weights_and_an_explicit_merge_is_warned_about(free_memory, caplog):
    """Rounding W + BA to bf16 drops much of the delta (the demo adapter lost 15 of 47 valid answers)."""
    free_memory(10**6)
    choice = resolve_adapter_weights("auto", "bf16", "cpu", MIB, 1)
    assert not choice.merged and "round away" in choice.reason
    with caplog.at_level("WARNING"):
        assert resolve_adapter_weights("merged", "bf16", "cpu", MIB, 1).merged
    assert "round away" in caplog.text


def test_auto_keeps_adapters_beside_the_base_when_the_copies_would_take_over_half_the_free_memory(free_memory):
    free_memory(1000)
    choice = resolve_adapter_weights("auto", "fp32", "cpu", 540 * MIB, 1)
    assert not choice.merged
    assert "1 merged copies need 540 MiB, over half of the 1000 MiB free" in choice.reason


@pytest.mark.parametrize("precision", ["8bit", "4bit"])
def test_a_quantized_base_is_never_merged(precision, free_memory):
    free_memory(10**6)
    assert not resolve_adapter_weights("auto", precision, "cuda", MIB, 1).merged
    with pytest.raises(ValueError, match="merged adapters need an fp32 or bf16 base"):
        resolve_adapter_weights("merged", precision, "cuda", MIB, 1)


def test_explicit_choices_are_kept_and_unknown_ones_refused(free_memory):
    free_memory(1)  # too little for auto to merge: an explicit merged is still honoured
    assert resolve_adapter_weights("merged", "fp32", "cpu", 540 * MIB, 3).merged
    assert not resolve_adapter_weights("unmerged", "fp32", "cpu", MIB, 1).merged
    with pytest.raises(ValueError, match="adapter weights must be one of auto, merged, unmerged"):
        resolve_adapter_weights("fused", "fp32", "cpu", MIB, 1)


def test_serve_settings_refuse_an_unknown_adapter_weights_value():
    from ray_app.serve.serve_settings import ServeSettings

    with pytest.raises(ValueError, match="adapter_weights must be one of"):
        ServeSettings(adapter_weights="fused")  # type: ignore[arg-type]


@pytest.mark.parametrize("adapter_weights", ["merged", "unmerged"])
def test_the_oracle_applies_the_adapter_as_the_engine_does(adapter_weights, tiny_model_dir, tmp_path):
    """HF generate (the tests' oracle) and the decode engine load an adapter by the same rule, so the
    engine's answers equal the oracle's in fp32 either way."""
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings, generate_greedy, load_model_and_tokenizer
    from ray_app.prompts import toolcall_prompt
    from tests.sample_tools import WEATHER
    from tests.test_serve import random_lora_adapter

    adapter_dir = tmp_path / "adapter_toolcall"
    random_lora_adapter(tiny_model_dir, adapter_dir)
    settings = SlmSettings(
        model_path=tiny_model_dir,
        adapter_path=adapter_dir,
        precision="fp32",
        max_new_tokens=12,
        adapter_weights=adapter_weights,
    )
    engine = SlmEngine(settings)
    assert engine.describe()["adapter_weights"] == adapter_weights
    requests = [EngineRequest(index, "toolcall", toolcall_prompt([WEATHER], text)) for index, text in
                enumerate(["Weather in Paris?", "Is it raining in Oslo today?"])]  # fmt: skip
    answers = engine.generate(requests)
    model, tokenizer, device, _ = load_model_and_tokenizer(settings)
    expected = generate_greedy(model, tokenizer, device, [request.messages for request in requests], [12, 12])
    assert [answer.token_ids for answer in answers] == [answer.token_ids for answer in expected]


def test_the_lm_head_gets_its_last_position_input_in_plain_row_major_strides(tiny_model_dir):
    """A prefill's `logits_to_keep=1` hands the lm_head `hidden[:, -1:, :]`, whose leading stride is the
    whole prompt's; with a frozen bf16 weight torch then copies the transposed weight at every call. The
    hook gives the head a fresh [batch, 1, width] copy of the same values; full outputs pass as they are."""
    import torch

    from ray_app.engines.slm import SlmSettings, _in_standard_strides, load_model_and_tokenizer, standard_strides

    assert standard_strides((1, 1, 576)) == (576, 576, 1)
    assert standard_strides((2, 0, 3)) == (3, 3, 1)
    model, *_ = load_model_and_tokenizer(SlmSettings(model_path=tiny_model_dir, precision="fp32"))
    head = model.get_output_embeddings()
    seen = []
    probe = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].stride()))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with torch.inference_mode():
        last = model(input_ids=ids, logits_to_keep=1).logits
        every = model(input_ids=ids).logits
    probe.remove()
    width = model.config.hidden_size
    assert seen == [(width, width, 1), (7 * width, width, 1)]  # the slice was re-laid; the full output kept
    torch.testing.assert_close(last[0, -1], every[0, -1])
    hidden = torch.randn(2, 7, width)
    [relaid] = _in_standard_strides(head, (hidden[:, -1:, :],))
    assert relaid.stride() == (width, width, 1) and torch.equal(relaid, hidden[:, -1:, :])
    assert _in_standard_strides(head, (hidden,)) is None
