"""The rows that decode together, and how a prompt gets there (prefill in pieces).

Agent prompts differ a lot in length (toolcall prompts with their tool signatures run from ~150 to
~1,000 tokens) and so do answers. So:

1. Prefill (`PrefillTask`): each prompt on its own (no padding: a padded batch computes every
   prompt at the longest one's length, which on a CPU can make batching slower than answering one
   by one), in pieces: a piece ends where a shareable prefix ends (`prefix_cache.py`: a cached one
   is skipped, the others are computed and kept) and no piece is longer than the prefill chunk, so a
   long prompt is prefilled a chunk at a time between the running rows' decode steps instead of
   stalling them. The pieces one engine step computes run side by side in one forward call, each
   attending over its own prompt (`run_prefill_pieces`: packed, not padded). Logits only for the
   last position (the lm_head over a whole prompt is a fifth of a small model's prefill).
2. A `RunningBatch` holds the rows decoding together: one preallocated key/value buffer per layer
   with every row's keys/values right-aligned at the column the next step writes, so a step writes
   in place (a growing cache copies all of it at every step). New rows join between steps (the
   buffer is rebuilt around them); a finished row (end-of-sequence or its own token limit) leaves
   at once, and padding no remaining row needs is dropped.
3. Each step is one batched forward; every chosen token is handed out at once (streaming), the
   last one of a row with its whole answer (a finished answer never waits for the others).

Greedy, so a row's tokens depend on its prompt only: the pieces of a prompt are fixed by the
prompt and the chunk size, and rows never see each other (attention is masked per row).

A row with a constraint (`GenerationJob.constraint`, `engines/constrained/`) has its grammar's mask
applied to its logits before the argmax, its first token included, closes its answer in time near its
token limit (`RowGrammar.within_budget`), and ends as soon as its grammar is complete; rows without
one are not touched (their logits, tokens and answers are what they are without constraints), so both
kinds decode in the same batch.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import time
from dataclasses import dataclass, field

from ray_app.engines.constrained.constraints import DecodingConstraint
from ray_app.engines.constrained.row_grammar import RowGrammar, mask_logits
from ray_app.engines.decode.prefix_cache import PrefixKvCache
from ray_app.engines.decode.row_attention import uses_row_attention
from ray_app.engines.slm import GreedyAnswer, stop_token_ids

# A group of rows reads its shared prefix once when it spares reading at least this many key/value columns
# ((rows - 1) × prefix length). Sharing adds an attention call and a merge per layer; measured on the
# Intel Xeon (avx512_bf16, AMX; 2 cores, fp32, 16 rows, 2026-12-04): 15 rows × a 380-token agent tool
# block (5,700 columns) 108 → 90 ms per decode step, 15 rows × the 74-token toolcall instruction (1,110
# columns) 113 → 118 ms. Where memory is slower (a step's row attention ~190 µs per row and layer on the
# AVX2-only AMD EPYC vs ~24 µs here) a column costs more and sharing pays sooner: this errs on the side
# of not sharing there.
MIN_SHARED_COLUMNS = 2048
# A layout leaves this many answers' worth of columns right of the running rows' own, for rows that join later
# in place (a row needs its whole answer's room when it joins). With 1, the 50-row toolcall evaluation (fp32,
# 32 rows at a time, Intel Xeon, 2026-12-04) laid its buffers out twice, the second time copying 30 rows into
# 2 GB of new buffers (4.3-6.2 s on this VM); with 2 once (joins 0.9 s in all), the same 50 answers, for 10%
# more columns.
LATER_ROWS_SLACK = 2


@dataclass(frozen=True)
class GenerationJob:
    model_name: str
    prompt_ids: list[int]  # the messages with the chat template applied, tokenized once at the ingress
    max_new_tokens: int
    prefix_ends: tuple[int, ...] = ()  # where the prompt's shareable prefixes end (prefix_cache.py)
    request_id: str | None = None  # names the job for `DecodeScheduler.cancel`
    stop_texts: tuple[str, ...] = ()  # the answer ends where one of these first appears (OpenAI's `stop`)
    constraint: DecodingConstraint | None = None  # the grammar the answer must fit (None: free decoding)


@dataclass(frozen=True)
class StepToken:
    job: int  # which job: the index the caller gave it
    token_id: int
    answer: GreedyAnswer | None = None  # set on the job's last token: its whole answer
    cancelled: bool = False  # the job was cancelled (its caller left): no token, no answer

    @property
    def finished(self) -> bool:
        return self.answer is not None or self.cancelled


@dataclass
class Row:
    job: GenerationJob
    key: int  # the caller's index for the job (StepToken.job)
    started: float  # when the job was admitted, its prefill began (its answer's latency counts from here)
    tokens: list[int] = field(default_factory=list)
    grammar: RowGrammar | None = None  # the job's constraint, as this row advances through it
    cached_prompt_tokens: int = 0  # its prompt's tokens loaded from the prefix cache (OpenAI's usage reports them)

    @functools.cached_property
    def prefix_keys(self) -> tuple:
        """(length, model, the prompt's first `length` token ids) for each shareable prefix end of the
        prompt, shortest first. Rows with an equal key hold equal keys/values in those columns: a prompt's
        prefill pieces up to a shareable end depend on the tokens before it alone (`prefill_piece_ends`),
        and in evaluation each such piece is computed alone, so the same tokens give the same bytes (or
        were loaded from the cache). Serve packs them with other prompts' pieces (`run_prefill_pieces`),
        so two rows that both computed a prefix may hold it with different last bits; a row sharing
        the other's copy then reads that one (the 1e-7 of `shared_prefix_attention`)."""
        ids = self.job.prompt_ids
        return tuple((end, self.job.model_name, tuple(ids[:end]))
                     for end in self.job.prefix_ends if 0 < end < len(ids))  # fmt: skip


class RunningBatch:
    """The rows of one model that decode together (the model's adapter must be active on each call).

    Rows sit in slots of preallocated key/value buffers. A finished row leaves its slot dead at once
    (no copy: a dead slot keeps decoding garbage that nobody reads); a row that joins takes a dead
    slot in place when its prompt and its answer fit the buffer, else every row is laid out anew
    with room to spare, so rows finishing and joining one by one cost no copy of the others. When
    dead slots outnumber the live ones, the live rows are copied together (dead slots cost attention).
    """

    share_prefix_reads = True  # rows sharing a prompt prefix read its keys/values once per step (row attention)
    min_shared_columns = MIN_SHARED_COLUMNS

    def __init__(self, model, tokenizer, device, row_kernel=None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.row_kernel = row_kernel  # attention_kernel.CompiledRowAttention, or None: torch's flash per row
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.row_attention = uses_row_attention(model)  # `row_attention.py` (CPU); else masked SDPA
        self.slots: list[Row | None] = []  # a row per slot of the buffers; None: dead
        self.layers: list = []  # PreallocatedLayer per model layer, [slots, kv_heads, width, head_dim]
        self.attention = None  # [slots, width]: 1 where a slot has a real position
        self.positions = None  # [slots]: the position of the token each slot feeds next
        self.next_tokens = None  # [slots]: the token each slot feeds next
        self.filled = 0  # columns in use; every slot's next token goes to column `filled`
        self.upcoming = 0  # rows still prefilling for this batch when rows last joined (their slots stay)
        self._sharing: dict[int, tuple[int, int]] | None = None  # slot → (source slot, prefix length); None: stale

    @property
    def rows(self) -> list[Row]:
        return [row for row in self.slots if row is not None]

    def __len__(self) -> int:
        return sum(row is not None for row in self.slots)

    @property
    def width(self) -> int:
        return 0 if self.attention is None else self.attention.shape[1]

    def join(self, prefilled: list[PrefillTask], upcoming: list[GenerationJob] = ()) -> list[StepToken]:
        """Add the rows whose prompts were just prefilled; returns each one's first token (a row that
        is finished with it, end-of-sequence or a limit of one token, does not join). `upcoming`: jobs
        still prefilling that will join this batch; a rebuild keeps a dead slot, wide enough, for each,
        so they join in place instead of each rebuilding the buffers again."""
        import torch

        self.upcoming, self._sharing = len(upcoming), None

        joining, chosen = [], []
        for task in prefilled:
            task.row.cached_prompt_tokens = task.cached_tokens
            if task.row.grammar is not None:
                mask_logits(task.logits, [(0, task.row.grammar)])
            token = int(task.logits.argmax(dim=-1))
            if task.row.grammar is not None:
                token = task.row.grammar.within_budget(token, task.row.job.max_new_tokens)
            step_token = take_token(task.row, token, self.stop_ids, self.tokenizer)
            chosen.append(step_token)
            if not step_token.finished:
                joining.append((task.row, layer_tensors(task.cache), token))
        if joining:
            with torch.inference_mode():
                dead = [slot for slot, row in enumerate(self.slots) if row is None]
                # a prompt longer than the running rows' columns moves them right within their buffers
                shift = max(0, max(len(row.job.prompt_ids) for row, _, _ in joining) - self.filled)
                room = self.width - self.filled - shift  # columns right of `filled` once shifted
                fits = (len(dead) >= len(joining)
                        and all(row.job.max_new_tokens <= room for row, _, _ in joining)
                        and all(row.job.max_new_tokens - len(row.tokens) <= room for row in self.rows))  # fmt: skip
                if fits:
                    if shift:
                        self._shift_right(shift)
                    for slot, joiner in zip(dead, joining, strict=False):
                        self._place(slot, *joiner)
                else:
                    self._rebuild(joining, upcoming)
        return chosen

    def step(self) -> list[StepToken]:
        """One decode step for every slot: the tokens chosen for the live rows; finished rows leave."""
        import torch

        with torch.inference_mode():
            self.attention[:, self.filled] = 1
            self.filled += 1
            if self.row_attention:  # each live row attends over its own columns: no mask, dead slots skipped
                starts = self.attention[:, : self.filled].argmax(dim=1).tolist()  # a row's first real column
                attention = self._row_spans(starts)
            else:
                attention = {"attention_mask": self.attention[:, : self.filled]}
            output = self.model(
                input_ids=self.next_tokens[:, None],
                position_ids=self.positions[:, None],
                use_cache=True,
                **attention,
                **{cache_keyword(self.model): self.cache},
            )
            self.positions = self.positions + 1
            logits = output.logits[:, -1, :]
            guided = [(slot, row.grammar) for slot, row in enumerate(self.slots)
                      if row is not None and row.grammar is not None]  # fmt: skip
            if guided:
                mask_logits(logits, guided)
            self.next_tokens = logits.argmax(dim=-1)
            for slot, grammar in guided:
                row = self.slots[slot]
                token = int(self.next_tokens[slot])
                kept = grammar.within_budget(token, row.job.max_new_tokens - len(row.tokens))
                if kept != token:
                    self.next_tokens[slot] = kept
            chosen = []
            for slot, (row, token) in enumerate(zip(self.slots, self.next_tokens.tolist(), strict=True)):
                if row is not None:
                    chosen.append(take_token(row, token, self.stop_ids, self.tokenizer))
                    if chosen[-1].finished:
                        self.slots[slot], self._sharing = None, None
            self._tidy()
        return chosen

    def _row_spans(self, starts: list[int]) -> dict:
        """Row attention's arguments for this step: each live row's span, and the prefixes rows share."""
        from ray_app.engines.decode.row_attention import RowSpans, SharedPrefix

        if self._sharing is None:
            self._sharing = shared_prefix_groups(self.slots, self.min_shared_columns) if self.share_prefix_reads else {}
        spans, groups = [], {}
        for slot, row in enumerate(self.slots):
            if row is None:
                continue
            source, length = self._sharing.get(slot, (slot, 0))
            spans.append((slot, starts[slot] + length))
            if length:
                groups.setdefault((source, length), []).append(slot)
        shared = [SharedPrefix(tuple(slots), source, starts[source], length)
                  for (source, length), slots in groups.items()]  # fmt: skip
        arguments = {"row_spans": RowSpans(tuple(spans))}
        if shared:
            arguments["shared_prefixes"] = shared
        if self.row_kernel is not None:
            arguments["row_kernel"] = self.row_kernel
        return arguments

    def drop(self, keys: set[int]) -> list[Row]:
        """Take the rows with these keys out of the batch (their jobs were cancelled); returns them."""
        self._sharing = None
        dropped = [row for row in self.slots if row is not None and row.key in keys]
        self.slots = [None if row is not None and row.key in keys else row for row in self.slots]
        if dropped:
            self._tidy()
        return dropped

    def _tidy(self) -> None:
        """Free everything when no row is left; copy the live rows together when most slots are dead
        (not counting those kept for upcoming rows)."""
        live = [slot for slot, row in enumerate(self.slots) if row is not None]
        if not live:
            self.slots, self.layers, self.attention, self.positions, self.next_tokens, self.filled = (
                [],
                [],
                None,
                None,
                None,
                0,
            )
        elif len(self.slots) - len(live) > len(live) + self.upcoming:
            self._keep(live)

    def _keep(self, keep: list[int]) -> None:
        """Keep the slots at `keep` (ascending), moved to the first slots of the same buffers; drop leading
        columns that are padding for every kept row (the buffers become views that start after them)."""
        import torch

        self.slots, self._sharing = [self.slots[index] for index in keep], None
        index = torch.tensor(keep, device=self.device)
        self.next_tokens, self.positions = self.next_tokens[index], self.positions[index]
        attention = self.attention[index]
        padding = int((attention[:, : self.filled].cumsum(dim=1) == 0).sum(dim=1).min())
        self.attention, self.filled = attention[:, padding:], self.filled - padding
        for layer in self.layers:
            layer.keep_slots(keep, padding)

    def _shift_right(self, shift: int) -> None:
        """Move every slot's columns `shift` to the right within the buffers (a longer prompt then fits left
        of `filled`); the caller checked that the rows' remaining tokens still fit on the right."""
        import torch

        scratch = torch.empty_like(self.layers[0].keys)  # a layer's written columns, reused for every buffer
        for layer in self.layers:
            layer.shift_right(shift, scratch)
        written = self.attention[:, : self.filled].clone()
        self.attention[:, shift : self.filled + shift] = written
        self.attention[:, :shift] = 0
        self.filled += shift

    def _place(self, slot: int, row: Row, prompt_layers: tuple, token: int) -> None:
        """Put a joining row into a dead slot: its prompt right-aligned at `filled`, the rest masked."""
        start = self.filled - len(row.job.prompt_ids)
        self.attention[slot] = 0
        self.attention[slot, start : self.filled] = 1
        for layer, (prompt_keys, prompt_values) in zip(self.layers, prompt_layers, strict=True):
            layer.buffer_keys[slot, :, start : self.filled] = prompt_keys[0]
            layer.buffer_values[slot, :, start : self.filled] = prompt_values[0]
        self.positions[slot] = len(row.job.prompt_ids)
        self.next_tokens[slot] = token
        self.slots[slot] = row

    def _rebuild(self, joining: list[tuple[Row, tuple, int]], upcoming: list[GenerationJob]) -> None:
        """Lay the live rows and the joining ones out in new buffers, all aligned at one column, with
        room for every answer to finish and as much again for rows that join later in place, and a
        dead slot for each upcoming job, its prompt fitting left of that column."""
        import torch

        live = [slot for slot, row in enumerate(self.slots) if row is not None]
        if len(live) < len(self.slots):
            self._keep(live)  # dead slots go first, so only live rows are copied below
        running = self.rows
        filled = max([self.filled] + [len(row.job.prompt_ids) for row, _, _ in joining]
                     + [len(job.prompt_ids) for job in upcoming])  # fmt: skip
        rows = running + [row for row, _, _ in joining]
        room = max(row.job.max_new_tokens - len(row.tokens) for row in rows)  # steps still to write
        longest_answer = max(job.max_new_tokens for job in [row.job for row in rows] + list(upcoming))
        slack = LATER_ROWS_SLACK * longest_answer  # rows that join later fit in place
        width, shift, count = filled + room + slack, filled - self.filled, len(rows) + len(upcoming)
        attention = torch.zeros(count, width, dtype=torch.long, device=self.device)
        if running:
            attention[: len(running), shift:filled] = self.attention[:, : self.filled]
        for offset, (row, _, _) in enumerate(joining):
            attention[len(running) + offset, filled - len(row.job.prompt_ids) : filled] = 1
        attention[len(rows) :, filled - 1] = 1  # a kept slot attends somewhere until its row joins
        layers = []
        template_keys = joining[0][1][0][0]
        # Row attention reads a row's own columns only, all written below or by its steps; masked SDPA
        # reads every column (a masked one weighs 0, but 0 × NaN is NaN), so it gets zeros.
        allocate = torch.empty if self.row_attention else torch.zeros
        for layer_index in range(len(joining[0][1])):
            keys = allocate(count, template_keys.shape[1], width, template_keys.shape[3],
                            dtype=template_keys.dtype, device=template_keys.device)  # fmt: skip
            values = allocate(keys.shape, dtype=keys.dtype, device=keys.device)
            if running:
                old = self.layers[layer_index]
                keys[: len(running), :, shift:filled] = old.keys
                values[: len(running), :, shift:filled] = old.values
            for offset, (_, prompt_layers, _) in enumerate(joining):
                prompt_keys, prompt_values = prompt_layers[layer_index]
                start = filled - prompt_keys.shape[2]
                keys[len(running) + offset, :, start:filled] = prompt_keys[0]
                values[len(running) + offset, :, start:filled] = prompt_values[0]
            layers.append(preallocated_layer_class()(keys, values, filled))
        kept = [0] * len(upcoming)  # a kept slot decodes token 0 at position 0 until its row takes it
        joining_tokens = torch.tensor([token for _, _, token in joining] + kept, device=self.device)
        joining_positions = torch.tensor([len(row.job.prompt_ids) for row, _, _ in joining] + kept,
                                         device=self.device)  # fmt: skip
        if running:
            self.next_tokens = torch.cat([self.next_tokens, joining_tokens])
            self.positions = torch.cat([self.positions, joining_positions])
        else:
            self.next_tokens, self.positions = joining_tokens, joining_positions
        self.slots, self.layers, self.attention, self.filled = (
            [*rows, *[None] * len(upcoming)],
            layers,
            attention,
            filled,
        )

    @property
    def cache(self):
        from transformers import DynamicCache

        cache = DynamicCache()
        cache.layers = self.layers
        return cache


def shared_prefix_groups(slots: list[Row | None], min_columns: int) -> dict[int, tuple[int, int]]:
    """slot → (source slot, prefix length) for the live rows that share a prompt prefix with another live
    row: each row joins the longest of its prefixes that another row holds too; the source is the first
    slot of a group (whose copy of the prefix every row of the group reads). A group that spares reading
    fewer than `min_columns` columns is left out (its rows read their own)."""
    live = {slot: row.prefix_keys for slot, row in enumerate(slots) if row is not None}
    holders: dict[tuple, int] = {}
    for keys in live.values():
        for key in keys:
            holders[key] = holders.get(key, 0) + 1
    groups: dict[tuple, list[int]] = {}
    for slot, keys in live.items():
        shared = next((key for key in reversed(keys) if holders[key] > 1), None)
        if shared is not None:
            groups.setdefault(shared, []).append(slot)
    return {slot: (members[0], key[0]) for key, members in groups.items()
            if len(members) > 1 and (len(members) - 1) * key[0] >= min_columns for slot in members}  # fmt: skip


def take_token(row: Row, token: int, stop_ids: set[int], tokenizer) -> StepToken:
    """Add the chosen token to its row; the row's last token carries its whole answer. A row whose grammar
    is complete ends at once: nothing but end-of-sequence could follow."""
    row.tokens.append(token)
    grammar_ended = row.grammar is not None and token not in stop_ids and row.grammar.take(token)
    if row.job.stop_texts:
        text = tokenizer.decode(row.tokens, skip_special_tokens=True)
        found = first_stop_text(text, row.job.stop_texts)
        if found is not None:
            at, stop_text = found
            return StepToken(row.key, token, greedy_answer(tokenizer, row, stop_ids, text[:at], stop_text))
    if token in stop_ids or len(row.tokens) >= row.job.max_new_tokens or grammar_ended:
        return StepToken(row.key, token, greedy_answer(tokenizer, row, stop_ids, grammar_ended=grammar_ended))
    return StepToken(row.key, token)


def first_stop_text(text: str, stop_texts: tuple[str, ...]) -> tuple[int, str] | None:
    """(where the earliest stop text starts, which one), or None."""
    hits = [(text.find(stop_text), stop_text) for stop_text in stop_texts if stop_text and stop_text in text]
    return min(hits) if hits else None


def greedy_answer(
    tokenizer,
    row: Row,
    stop_ids: set[int],
    text: str | None = None,
    stop_text: str | None = None,
    grammar_ended: bool = False,
) -> GreedyAnswer:
    """The row's answer; a stop text ends it like end-of-sequence does, and is not part of the text; so
    does a complete grammar (no end-of-sequence token is spent on it)."""
    return GreedyAnswer(
        text=tokenizer.decode(row.tokens, skip_special_tokens=True) if text is None else text,
        prompt_tokens=len(row.job.prompt_ids),
        completion_tokens=len(row.tokens),
        latency_s=time.perf_counter() - row.started,  # from admission (prefill start) until the answer was complete
        token_ids=tuple(row.tokens),
        stopped=stop_text is not None or row.tokens[-1] in stop_ids or grammar_ended,
        stop_text=stop_text,
        cached_prompt_tokens=row.cached_prompt_tokens,
    )


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


def cache_keyword(model) -> str:
    """transformers renamed `past_key_values` to `cache` within 5.x; use the name the model takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword(type(base))


@functools.cache
def _cache_keyword(model_class) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def layer_tensors(cache) -> tuple:
    """((keys, values), ...) per layer. Later updates concatenate into new tensors, so these stay as they are."""
    return tuple((layer.keys, layer.values) for layer in cache.layers)


@functools.cache
def preallocated_layer_class():
    """Built on first use: transformers is imported only when a model runs."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A cache layer over a fixed buffer: `update` writes the new step in place and returns views."""

        def __init__(self, keys, values, filled: int):
            super().__init__()
            self.buffer_keys, self.buffer_values, self.filled = keys, values, filled
            self.device, self.is_initialized = keys.device, True
            self._expose()

        def _expose(self) -> None:
            self.keys = self.buffer_keys[:, :, : self.filled]
            self.values = self.buffer_values[:, :, : self.filled]

        def update(self, key_states, value_states, *args, **kwargs):
            new = key_states.shape[-2]
            self.buffer_keys[:, :, self.filled : self.filled + new] = key_states
            self.buffer_values[:, :, self.filled : self.filled + new] = value_states
            self.filled += new
            self._expose()
            return self.keys, self.values

        def keep_slots(self, keep: list[int], padding: int) -> None:
            """Keep the batch rows at `keep` (ascending), copied down to the first slots of the same buffers,
            and drop the first `padding` columns (padding no kept row uses): no new buffers, so no memory
            that was never touched (on a VM a first touch costs the host's page fault too)."""
            for buffer in (self.buffer_keys, self.buffer_values):
                for slot, kept in enumerate(keep):
                    if slot != kept:  # kept ≥ slot: a row is copied down before its own slot is written
                        buffer[slot, :, : self.filled] = buffer[kept, :, : self.filled]
            self.buffer_keys = self.buffer_keys[: len(keep), :, padding:]
            self.buffer_values = self.buffer_values[: len(keep), :, padding:]
            self.filled -= padding
            self._expose()

        def shift_right(self, shift: int, scratch) -> None:
            """Move the written columns `shift` to the right (`scratch`: a tensor shaped like them)."""
            for buffer in (self.buffer_keys, self.buffer_values):
                scratch.copy_(buffer[:, :, : self.filled])  # the two ranges overlap: copy through scratch
                buffer[:, :, shift : self.filled + shift] = scratch
            self.filled += shift
            self._expose()

    return PreallocatedLayer
