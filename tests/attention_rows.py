"""Test rows for row attention: a decode step's queries and a right-aligned key/value buffer."""

from __future__ import annotations

STARTS = (2, 0, 5, 9, 1)  # each slot's first real column
SHARING = (0, 2, 4)  # slots whose first `length` columns hold the same prefix (slot 0's copy is the source)


def rows_sharing_a_prefix(width: int, head_dim: int, length: int, heads: int = 6, key_heads: int = 2):
    """(attention module stand-in, query [5, heads, 1, head_dim], keys, values [5, key_heads, width,
    head_dim]): random, seed 0, with slots 0, 2 and 4 holding the same `length`-column prefix from their
    first column (`STARTS`) on; slots 1 and 3 share nothing."""
    import torch

    torch.manual_seed(0)
    slots = len(STARTS)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // key_heads, True
    query = torch.randn(slots, heads, 1, head_dim)
    key, value = torch.randn(slots, key_heads, width, head_dim), torch.randn(slots, key_heads, width, head_dim)
    source = STARTS[SHARING[0]]
    for slot in SHARING[1:]:
        start = STARTS[slot]
        key[slot, :, start : start + length] = key[SHARING[0], :, source : source + length]
        value[slot, :, start : start + length] = value[SHARING[0], :, source : source + length]
    return module, query, key, value
