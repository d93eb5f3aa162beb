"""How a prompt reaches the running rows (`running_batch.py`): prefill, each prompt on its own, in pieces.

Agent prompts differ a lot in length (toolcall prompts with their tool signatures run from ~150 to
~1,000 tokens). A padded batch computes every prompt at the longest one's length, which on a CPU can
make batching slower than answering one by one; so each prompt is prefilled on its own
(`PrefillTask`), in pieces: a piece ends where a shareable prefix ends (`prefix_cache.py`: a cached
one is skipped, the others are computed and kept) and no piece is longer than the prefill chunk, so a
long prompt is prefilled a chunk at a time between the running rows' decode steps instead of stalling
them. The pieces one engine step computes run side by side in one forward call, each attending over
its own prompt (`run_prefill_pieces`: packed, not padded). Logits only for the last position (the
lm_head over a whole prompt is a fifth of a small model's prefill).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray_app.engines.decode.cache_layers import cache_keyword, layer_tensors
from ray_app.engines.decode.prefix_cache import PrefixKvCache
from ray_app.engines.decode.row_attention import uses_row_attention

if TYPE_CHECKING:
    from ray_app.engines.decode.running_batch import GenerationJob, Row


def prefill_piece_ends(job: GenerationJob, chunk_tokens: int) -> tuple[int, ...]:
    """Where the prompt's prefill pieces end: at each shareable prefix end, and every `chunk_tokens`
    within the stretches between them. Fixed by the prompt and the chunk size alone."""
    length = len(job.prompt_ids)
    stretch_ends = sorted({end for end in job.prefix_ends if 0 < end < length} | {length})
    ends, start = [], 0
    for stretch_end in stretch_ends:
        ends.extend(range(start + chunk_tokens, stretch_end, chunk_tokens) if chunk_tokens > 0 else ())
        ends.append(stretch_end)
        start = stretch_end
    return tuple(ends)


class PrefillTask:
    """One prompt's prefill, a piece per forward call, so it can be spread over several scheduler
    iterations. The longest cached shareable prefix is loaded first and only the pieces after it run;
    a piece that ends a shareable prefix is cached. Pieces are fixed by the prompt (see
    `prefill_piece_ends`), so a cache hit skips exactly the computation a miss does.

    What a hit may still change is *when* the prompt finishes: the scheduler spends a budget of
    prompt tokens per iteration, so a prompt with a long cached prefix joins the running batch
    iterations earlier, and the rows that decode together at later steps differ — in bf16 that
    changes answers (4 of 32 toolcall rows, measured: a group answered by an actor that had answered
    another group first vs by a fresh one). With `schedule_as_uncached` (evaluation) the cached
    pieces stay in the schedule: each one is "run" without computing anything and spends the budget
    it would have spent, so the prompt joins when it would have with a cold cache, whatever the cache
    held — the answers depend on the rows alone, and a hit only saves the computation. Serve leaves
    it off: there arrival times already decide who decodes together, and a hit's earlier start is
    its latency gain.

    The cache is looked at when the task is admitted and again before each of its pieces: prompts
    admitted together (a group of evaluation rows, a burst of requests) all miss at admission, and
    the first of them to prefill a shared prefix caches it for the others before they reach it."""

    def __init__(
        self, row: Row, chunk_tokens: int, prefix_cache: PrefixKvCache | None, schedule_as_uncached: bool = False
    ):
        from transformers import DynamicCache

        self.row, self.prefix_cache, self.schedule_as_uncached = row, prefix_cache, schedule_as_uncached
        job = row.job
        self.shareable = {end for end in job.prefix_ends if 0 < end < len(job.prompt_ids)} if prefix_cache else set()
        self.cache, self.cached_tokens, self.logits = DynamicCache(), 0, None
        self.scheduled_tokens = 0  # the schedule's progress
        self.piece_ends = list(prefill_piece_ends(job, chunk_tokens))
        self.load_cached_prefix(count_miss=True)

    def load_cached_prefix(self, count_miss: bool = False) -> None:
        """Load the longest cached shareable prefix longer than what this task holds (it replaces the
        task's own keys/values: an entry is a whole prefix from the first token). Unless the schedule
        runs as uncached, the pieces it covers leave the schedule."""
        from transformers import DynamicCache

        job = self.row.job
        for end in sorted((end for end in self.shareable if end > self.done_tokens), reverse=True):
            entry = self.prefix_cache.get(job.model_name, tuple(job.prompt_ids[:end]), count_miss=count_miss)
            if entry is not None:
                self.cache = DynamicCache()
                for layer, (keys, values) in enumerate(entry.layers):
                    self.cache.update(keys, values, layer)
                self.cached_tokens = end  # loaded from the prefix cache, not computed
                break
        if not self.schedule_as_uncached and self.cached_tokens > self.scheduled_tokens:
            self.scheduled_tokens = self.cached_tokens
            self.piece_ends = [end for end in self.piece_ends if end > self.scheduled_tokens]

    @property
    def finished(self) -> bool:
        return not self.piece_ends

    @property
    def done_tokens(self) -> int:
        """Prompt tokens whose keys/values are in `self.cache` (loaded or computed)."""
        return max(self.scheduled_tokens, self.cached_tokens)

    @property
    def remaining_tokens(self) -> int:
        """Prompt tokens the schedule still counts for this prefill (what `run_piece` calls will return)."""
        return len(self.row.job.prompt_ids) - self.scheduled_tokens

    def covering_prefix_end(self) -> int | None:
        """Where the shareable prefix the next piece computes toward ends: a cache hit on it would skip
        the piece (None past the last shareable prefix: the piece is always computed)."""
        return min((end for end in self.shareable if end >= self.piece_ends[0]), default=None)

    def take_piece(self) -> tuple[int, PrefillPiece | None]:
        """Move the schedule past the next piece: returns its token count, which is what the schedule
        spends, and the piece to compute (None for a piece inside the cached prefix: it computes
        nothing). Call `load_cached_prefix` first to skip what the cache has gained meanwhile."""
        start, end = self.done_tokens, self.piece_ends.pop(0)
        tokens, self.scheduled_tokens = end - self.scheduled_tokens, end
        if end <= self.cached_tokens:
            return tokens, None
        return tokens, PrefillPiece(self, start, end)

    def piece_computed(self, end: int, logits) -> None:
        """After the piece ending at `end` ran: cache the prefix it ends, keep the last piece's logits."""
        if end in self.shareable:
            layers = layer_tensors(self.cache)
            if layers[0][0].shape[-2] > end:  # later pieces ran in the same call: keep the prefix alone
                layers = tuple((keys[:, :, :end].clone(), values[:, :, :end].clone()) for keys, values in layers)
            self.prefix_cache.put(self.row.job.model_name, tuple(self.row.job.prompt_ids[:end]), layers)
        if end == len(self.row.job.prompt_ids):
            self.logits = logits

    def run_piece(self, model, device) -> int:
        """Prefill the next piece on its own (the model's adapter must be active); returns its token count."""
        if self.shareable:
            self.load_cached_prefix()  # a prompt admitted beside this one may have cached more of it
        tokens, piece = self.take_piece()
        if piece is not None:
            run_prefill_pieces(model, device, [piece])
        return tokens


@dataclass(frozen=True)
class PrefillPiece:
    """Prompt tokens `[start, end)` of one prefill, to compute into its task's cache."""

    task: PrefillTask
    start: int
    end: int

    @property
    def ids(self) -> list[int]:
        return self.task.row.job.prompt_ids[self.start : self.end]


def packs_prefill(model) -> bool:
    """Whether prefill pieces of several prompts can run as one forward call: CPU row attention
    (`row_attention.packed_prefill_attention`), and no sliding window (its mask is not built there)."""
    config = model.config
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    return uses_row_attention(model) and not sliding


def run_prefill_pieces(model, device, pieces: list[PrefillPiece]) -> None:
    """Compute `pieces` (of one model; the model's adapter must be active) into their tasks' caches.

    Several pieces run as one forward call where the model packs prefill (`packs_prefill`): their
    tokens side by side in one sequence, each at its own positions, each piece attending over its own
    prompt only (consecutive pieces of one prompt in order). A forward call reads every weight once,
    so on a CPU a lone 32-token piece cost 100 ms where 256 tokens cost 324 ms (fp32, demo SLM, Intel
    Xeon, 2 cores): packing the pieces an engine step prefills spares the weight reads and the small
    matrix products. Otherwise one call per piece, as transformers computes a prompt with a cache.
    Attention is per piece either way; the linear layers see more rows packed, which can change the
    last bits of a result (a CPU matrix product is not blocked the same for every row count)."""
    import torch

    if len(pieces) == 1 or not packs_prefill(model):
        for piece in pieces:
            with torch.inference_mode():
                output = model(  # writes the piece's keys/values into its task's cache
                    input_ids=torch.tensor([piece.ids], device=device),
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_keyword(model): piece.task.cache},
                )
            piece.task.piece_computed(piece.end, output.logits[:, -1, :])
        return
    from ray_app.engines.decode.row_attention import PackedPrefill

    ids = [token for piece in pieces for token in piece.ids]
    positions = [position for piece in pieces for position in range(piece.start, piece.end)]
    ends = list(itertools.accumulate(piece.end - piece.start for piece in pieces))
    last = [index for index, piece in enumerate(pieces) if piece.end == len(piece.task.row.job.prompt_ids)]
    with torch.inference_mode():
        output = model(
            input_ids=torch.tensor([ids], device=device),
            position_ids=torch.tensor([positions], device=device),
            use_cache=False,  # each piece's keys/values go to its own task's cache (`PackedPrefill`)
            logits_to_keep=torch.tensor([ends[index] - 1 for index in last], device=device) if last else 1,
            packed_prefill=PackedPrefill(tuple((piece.task.cache, piece.end - piece.start) for piece in pieces)),
        )
    logits = dict(zip(last, output.logits[0], strict=False))
    for index, piece in enumerate(pieces):
        row_logits = logits.get(index)
        piece.task.piece_computed(piece.end, None if row_logits is None else row_logits[None])
