"""Greedy generation for a batch of requests without padded prefill: what Serve runs per batch.

Agent prompts differ a lot in length (toolcall prompts with their tool signatures run from ~150 to
~1,000 tokens). A left-padded batch computes every prompt at the longest one's length, which on a
CPU roughly doubles the prefill work and can make a batch slower than answering one by one. Here
each prompt is prefilled on its own (no padding, the exact computation a batch of one does), the
caches are left-aligned into one batch cache with an attention mask over the real positions, and
the decode steps run batched — where batching pays. Decoding is greedy; each answer stops at its
first end-of-sequence token or its own token limit.
"""

from __future__ import annotations

import time

from ray_app.engines.slm import GreedyAnswer, stop_token_ids


def generate_greedy_unpadded(
    model, tokenizer, device, prompts: list[list[int]], max_new_tokens: list[int]
) -> list[GreedyAnswer]:
    """`prompts`: token ids of conversations with the chat template applied (`engines.slm.prompt_ids`)."""
    import torch
    from transformers import DynamicCache

    started = time.perf_counter()
    stop_ids = stop_token_ids(model, tokenizer)
    longest = max(len(ids) for ids in prompts)
    batch = len(prompts)
    with torch.inference_mode():
        caches, first_logits = [], []
        for ids in prompts:
            output = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
            caches.append(output.past_key_values)
            first_logits.append(output.logits[:, -1, :])
        cache = DynamicCache()
        for layer in range(len(caches[0].layers)):
            keys = [left_pad(c.layers[layer].keys, longest) for c in caches]
            values = [left_pad(c.layers[layer].values, longest) for c in caches]
            cache.update(torch.cat(keys), torch.cat(values), layer)
        attention = torch.zeros(batch, longest, dtype=torch.long, device=device)
        for row, ids in enumerate(prompts):
            attention[row, longest - len(ids) :] = 1
        positions = torch.tensor([len(ids) for ids in prompts], device=device)
        next_tokens = torch.cat(first_logits).argmax(dim=-1)
        answers: list[list[int]] = [[] for _ in prompts]
        done = [False] * batch
        for step in range(max(max_new_tokens)):
            for row, token in enumerate(next_tokens.tolist()):
                if not done[row]:
                    answers[row].append(token)
                    done[row] = token in stop_ids or len(answers[row]) >= max_new_tokens[row]
            if all(done) or step == max(max_new_tokens) - 1:
                break
            attention = torch.cat([attention, torch.ones(batch, 1, dtype=torch.long, device=device)], dim=1)
            output = model(
                input_ids=next_tokens[:, None],
                attention_mask=attention,
                position_ids=positions[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache = output.past_key_values
            positions = positions + 1
            next_tokens = output.logits[:, -1, :].argmax(dim=-1)
    latency_s = time.perf_counter() - started
    return [
        GreedyAnswer(
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            prompt_tokens=len(ids),
            completion_tokens=len(tokens),
            latency_s=latency_s,
            token_ids=tuple(tokens),
            stopped=bool(tokens) and tokens[-1] in stop_ids,
        )
        for ids, tokens in zip(prompts, answers, strict=True)
    ]


def left_pad(tensor, length: int):
    """[1, heads, seq, dim] → [1, heads, length, dim], zeros in front (masked out by the attention mask)."""
    import torch

    missing = length - tensor.shape[2]
    if missing == 0:
        return tensor
    pad = torch.zeros(*tensor.shape[:2], missing, tensor.shape[3], dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], dim=2)
