"""The rows that decode together; a prompt joins them once prefilled (`prefill.py`).

Answers differ a lot in length, so:

1. A `RunningBatch` holds the rows decoding together: one preallocated key/value buffer per layer
   with every row's keys/values right-aligned at the column the next step writes, so a step writes
   in place (a growing cache copies all of it at every step). New rows join between steps (the
   buffer is rebuilt around them); a finished row (end-of-sequence or its own token limit) leaves
   at once, and padding no remaining row needs is dropped.
2. Each step is one batched forward; every chosen token is handed out at once (streaming), the
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
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ray_app.engines.constrained.constraints import DecodingConstraint
from ray_app.engines.constrained.row_grammar import RowGrammar, mask_logits
from ray_app.engines.decode.cache_layers import cache_keyword, layer_tensors, preallocated_layer_class
from ray_app.engines.decode.row_attention import uses_row_attention
from ray_app.engines.slm import GreedyAnswer, stop_token_ids

if TYPE_CHECKING:
    from ray_app.engines.decode.prefill import PrefillTask

# With torch's kernel a group of rows reads its shared prefix once when it spares reading at least this many
# key/value columns ((rows - 1) × prefix length); with the compiled kernel's vector path every group does (it
# reads the group's copy in each row's own pass). Else sharing adds an attention call and a merge per layer;
# measured on the Intel Xeon (avx512_bf16, AMX; 2 cores, fp32, 16 rows, 2026-12-04): 15 rows × a 380-token agent tool
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
            # fp32 for the argmax, as HF generate takes it (the same token: widening is exact): over 16 rows of
            # the 49k vocabulary torch's argmax took 1.42 ms in bf16, 0.39 ms widened first (AMD EPYC, 2026-12-06)
            logits = output.logits[:, -1, :].float()
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
            # the compiled kernel's vector path reads a group's copy in each row's own pass at no cost of its own
            reads_prefixes = self.row_kernel is not None and self.row_kernel.reads_shared_prefixes
            min_columns = 0 if reads_prefixes else self.min_shared_columns
            self._sharing = shared_prefix_groups(self.slots, min_columns) if self.share_prefix_reads else {}
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
        arguments = {"row_spans": RowSpans(tuple(spans), tuple(shared))}
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
