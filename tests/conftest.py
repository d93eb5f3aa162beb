"""Shared fixtures: a tiny random model with the demo SLM's tokenizer, and one Ray for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.langfuse_capture import langfuse_server  # noqa: F401  (a fixture shared by the tracing tests)

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "smollm2_tokenizer"


def build_tiny_model(folder: Path, seed: int = 42) -> Path:
    """A 2-layer Llama with SmolLM2's vocabulary and chat template (~1.6 M parameters, random weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray takes seconds)."""
    import ray

    from ray_app.engines.determinism import DETERMINISM_ENV

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": DETERMINISM_ENV})
    yield ray
    ray.shutdown()
