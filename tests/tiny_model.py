"""A tiny random model with the demo SLM's tokenizer, for tests that need speed, not quality.

Used by the pytest fixtures and by the TypeScript tests' harness, which builds one with
`python -m tests.tiny_model DIR` before it starts a Serve endpoint on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.tiny_model OUTPUT_DIR")
    print(build_tiny_model(Path(sys.argv[1])))
