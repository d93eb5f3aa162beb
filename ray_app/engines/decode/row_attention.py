"""Decode-step attention over each row's own columns (CPU).

A `RunningBatch` keeps every row's keys/values right-aligned in one buffer, so at each step a row
sits in the columns `[start, filled)` of a `filled`-wide buffer and everything left of `start` is
padding (rows with shorter prompts, rows that joined later) or, in a dead slot, garbage. Masked
SDPA over the whole buffer computes all of it: over the 50 toolcall test rows (groups of 32, 16 rows
decoding together) only 40% of the cells it computed were a live row's own columns. On a CPU
attention costs what it reads, so:

- each live row attends over exactly its own columns, `keys[row, :, start:filled]`, with no mask;
- dead slots are not computed (their outputs are zeros: nobody reads their tokens);
- the key/value heads a group of query heads shares are read once (the query heads of a group are
  the rows of one small attention, as transformers' `pack_gqa` does).

Measured (fp32, the 50 toolcall test rows, demo SLM, in one process, Intel(R) Xeon(R) Processor,
2 cores, 2026-12-02): 119 → 104 ms per decode step, 81.7 → 74.0 s for the 50 rows, the same 50
answers. Each call passes 4-D slices: with 3-D inputs torch's SDPA takes its math path (bmm, softmax,
bmm: 57.6 µs per call for 500 keys), with 4-D its CPU flash kernel (23.8 µs); in the engine that was
110 → 96 ms per step, 77.8 → 71.0 s for the 50 rows, the same answers (same machine, 2026-12-02,
eighth session). What is left of a step's attention is reading the keys/values: at 16 rows of ~600
columns they are ~440 MB per step in fp32, as much as the weights. One small attention per row
rather than per pair of adjacent rows or per batch: in a prototype pairs were as fast (72.4 s each)
and groups of four slower (74.7 s), and a row's result then depends on that row alone, never on
which rows decode beside it (but for the last bits of rows that share a prefix, below). Prefill (one
prompt, causal) and every call without row spans go to transformers' own SDPA attention unchanged.

Rows that hold the same prompt prefix (one agent's tool signatures on every request) each keep a copy
of it; with `RowSpans.shared` a group reads one copy per step instead. With torch's kernel
(`shared_prefix_attention`) the group's queries go through the flash kernel together over that copy,
whose blocking then depends on how many rows the group has, so those rows' outputs can differ in their
last bits (1e-7) from what the row alone would give; measured on the agent load, the same 64 answers
in fp32.

In fp32 and bf16 the rows go through our compiled kernel when the engine has one (`attention_kernel.py`:
all rows of a layer in one call). It reads a sharing row's prefix from the group's copy in the row's
own pass, as if it were the row's own columns: a row gives the very bytes it gives alone wherever its
copy of the prefix equals the group's (in evaluation, always), with no second call and no merge.

CPU models only (`use_row_attention`), fp32 and bf16. bf16 took masked SDPA over the buffer while
row attention still ran torch's math path (92 ms per step vs 80 ms masked); with the flash kernel the
same 50 rows in bf16 took 66.6 ms per step vs 80.8 ms masked, 41.8 s vs 48.5 s (same machine and
day). bf16 answers are not the bytes masked SDPA gave (bf16 CPU kernels round differently with the
shapes they see), and they now depend less on which rows decode beside them. On a GPU each per-row
call would cost a kernel launch: GPU models keep transformers' SDPA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

ROW_ATTENTION = "slm_swap_row_attention"  # the name registered with transformers' AttentionInterface


@functools.cache
def register_row_attention() -> str:
    """Register the implementation with transformers (once per process); returns its name."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ROW_ATTENTION, row_attention_forward)
    AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)  # prefill builds SDPA's masks as before
    return ROW_ATTENTION


def use_row_attention(model) -> bool:
    """Switch a CPU model's attention to `row_attention_forward`; returns whether it did (not on GPUs,
    nor for a model whose attention is not transformers' SDPA). A PEFT model passes these attributes
    through to the model it wraps, whose config they share."""
    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(register_row_attention())
    return True


def uses_row_attention(model) -> bool:
    return model.config._attn_implementation == ROW_ATTENTION


@dataclass(frozen=True)
class SharedPrefix:
    """Live rows whose first `length` columns hold the same keys/values (one prompt prefix, prefilled
    the same way for each: `running_batch.shared_prefix_groups`). Their queries attend over one copy of
    it, the `source` slot's from column `start`, in one call; each row's own call covers the rest."""

    slots: tuple[int, ...]
    source: int
    start: int
    length: int

    @functools.cached_property
    def index(self):
        """`slots` as an index tensor (built once per step, read by every layer)."""
        import torch

        return torch.tensor(self.slots)


@dataclass(frozen=True)
class RowSpans:
    """(slot, first column) of each live row in a decode step; iterates as those pairs. `shared`: the
    prefixes groups of these rows share (a sharing row's own span starts after its prefix)."""

    pairs: tuple[tuple[int, int], ...]
    shared: tuple[SharedPrefix, ...] = ()

    def __iter__(self):
        return iter(self.pairs)

    @functools.cached_property
    def tensor(self):
        """[rows, 5] int64 (slot, first column, and the slot, first column and length of the prefix the row
        shares, length 0 where none), as the compiled kernel reads them (built once per step, read by every
        layer)."""
        import torch

        prefixes = {slot: (prefix.source, prefix.start, prefix.length) for prefix in self.shared
                    for slot in prefix.slots}  # fmt: skip
        rows = [(slot, start, *prefixes.get(slot, (slot, 0, 0))) for slot, start in self.pairs]
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 5)

    @functools.cached_property
    def own_columns_tensor(self):
        """`tensor` without the shared prefixes: each row over its own columns only (merged with a flash
        call per shared prefix: `shared_prefix_attention`)."""
        return RowSpans(self.pairs).tensor


@dataclass(frozen=True)
class PackedPrefill:
    """Prefill pieces of several prompts packed side by side in one forward call's sequence: each
    piece's (cache, token count), in the sequence's order (`prefill.run_prefill_pieces`)."""

    pieces: tuple[tuple[object, int], ...]


def packed_prefill_attention(module, query, key, value, packed: PackedPrefill, dropout, scaling, **kwargs):
    """Each piece appends its keys/values to its own prompt's cache and attends over that cache
    alone, causally, through torch's SDPA with the mask transformers would build for that piece
    computed on its own: what a piece's attention computes does not depend on the pieces packed
    beside it. Grouped-query heads go to SDPA as they are (`enable_gqa`): transformers' SDPA
    attention copies each key head for its query heads first wherever there is a mask, i.e. in every
    piece after the first, and the copy cost more than the attention (same bits; fp32, 9 query and 3
    key heads, 16 positions after 436: 0.64 → 0.18 ms, AMD EPYC held to AVX2, 2026-12-06)."""
    import torch

    outputs, at = [], 0
    for cache, length in packed.pieces:
        piece = slice(at, at + length)
        piece_keys, piece_values = cache.update(key[:, :, piece], value[:, :, piece], module.layer_idx)
        past = piece_keys.shape[-2] - length
        mask = None  # no past (SDPA's causal mask) or one query (no mask), as transformers leaves it
        if past and length > 1:
            mask = torch.ones(length, past + length, dtype=torch.bool, device=query.device).tril(past)[None, None]
        output = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, piece], piece_keys, piece_values, attn_mask=mask, dropout_p=dropout, scale=scaling,
            is_causal=mask is None and length > 1, enable_gqa=True,
        )  # fmt: skip
        outputs.append(output.transpose(1, 2).contiguous())  # [batch, positions, heads, head_dim], as transformers'
        at += length
    if at != query.shape[2]:
        raise ValueError(f"packed prefill pieces cover {at} positions of {query.shape[2]}")
    return torch.cat(outputs, dim=1), None


def row_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention signature. With `row_spans` ((slot, first column), one per live row;
    a decode step: one query position per row), each listed row attends over its own columns only;
    with `RowSpans.shared` (a sharing row's span then starts after its prefix) the rows of each group
    read one copy of the prefix; without spans, SDPA as transformers computes it. With `row_kernel`
    (`attention_kernel.CompiledRowAttention`) all rows go through it in one call, instead of torch's
    flash kernel once per row (and once per shared prefix)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    row_spans = kwargs.pop("row_spans", None)
    row_kernel = kwargs.pop("row_kernel", None)
    packed_prefill = kwargs.pop("packed_prefill", None)
    if packed_prefill is not None:
        return packed_prefill_attention(module, query, key, value, packed_prefill, dropout, scaling, **kwargs)
    if row_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    import torch

    slots, heads, positions, head_dim = query.shape
    if positions != 1:
        raise ValueError(f"row attention answers one query position per row (a decode step), got {positions}")
    key_heads = key.shape[1]
    grouped = query.reshape(slots, key_heads, heads // key_heads, head_dim)  # a group's query heads, as rows
    output = torch.zeros(grouped.shape, dtype=grouped.dtype, device=grouped.device)  # contiguous
    if row_kernel is not None and not row_kernel.supports(key):
        row_kernel = None
    if not isinstance(row_spans, RowSpans):
        row_spans = RowSpans(tuple(row_spans))
    if row_kernel is not None and (row_kernel.reads_shared_prefixes or not row_spans.shared):
        row_kernel(grouped, key, value, scaling, row_spans.tensor, output)  # shared prefixes too: one call
    elif row_spans.shared:
        shared_prefix_attention(grouped, key, value, scaling, row_spans, output, row_kernel)
    else:
        for slot, start in row_spans:  # 4-D slices: torch's CPU flash kernel (3-D inputs take the math path)
            output[slot : slot + 1] = torch.nn.functional.scaled_dot_product_attention(
                grouped[slot : slot + 1], key[slot : slot + 1, :, start:], value[slot : slot + 1, :, start:],
                scale=scaling,
            )  # fmt: skip
    return output.reshape(slots, 1, heads, head_dim), None


def shared_prefix_attention(grouped, key, value, scaling, row_spans: RowSpans, output, row_kernel=None) -> None:
    """Attention in two parts for rows that share a prefix: every row over its own span (for a sharing
    row the columns after the prefix; through `row_kernel` when given, else torch's flash kernel per row),
    then each group's queries together over the one copy of its prefix through torch's flash kernel; the
    two parts are merged by their log-sum-exps (as FlashInfer's cascade attention, or the flash kernel
    itself between blocks of keys). A decode step of rows that share a long prefix (one agent's tool
    signatures) reads that prefix's keys/values once instead of once per row. (A compiled kernel built with
    its vector path reads the group's copy in each row's own pass instead: no second call, no merge.)"""
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # returns the log-sum-exp too
    log_sum_exp = torch.zeros(grouped.shape[:3], dtype=torch.float32, device=grouped.device)
    if row_kernel is not None:
        row_kernel(grouped, key, value, scaling, row_spans.own_columns_tensor, output, log_sum_exp)
    for slot, start in row_spans if row_kernel is None else ():
        rows = slice(slot, slot + 1)
        output[rows], log_sum_exp[rows] = flash(grouped[rows], key[rows, :, start:], value[rows, :, start:],
                                                scale=scaling)  # fmt: skip
    key_heads, per_key_head, head_dim = grouped.shape[1:]
    for prefix in row_spans.shared:
        index, count = prefix.index, len(prefix.slots)
        queries = grouped[index].transpose(0, 1).reshape(1, key_heads, count * per_key_head, head_dim)
        columns = slice(prefix.start, prefix.start + prefix.length)
        source = slice(prefix.source, prefix.source + 1)
        prefix_output, prefix_lse = flash(queries, key[source, :, columns], value[source, :, columns], scale=scaling)
        prefix_output = prefix_output.reshape(key_heads, count, per_key_head, head_dim).transpose(0, 1)
        prefix_lse = prefix_lse.reshape(key_heads, count, per_key_head).transpose(0, 1)
        # softmax over both parts = own + (prefix - own) · e^prefix_lse / (e^prefix_lse + e^own_lse)
        prefix_share = torch.sigmoid(prefix_lse - log_sum_exp[index])[..., None]
        output[index] = torch.lerp(output[index].float(), prefix_output.float(), prefix_share).to(output.dtype)
