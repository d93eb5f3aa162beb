"""Greedy decoding of many requests at once, with requests joining and leaving between steps.

Agent prompts differ a lot in length (toolcall prompts with their tool signatures run from ~150 to
~1,000 tokens) and so do answers. So:

1. Prefill: each prompt on its own (no padding: a padded batch computes every prompt at the
   longest one's length, which on a CPU can make batching slower than answering one by one), in
   the pieces `prefix_cache.py` describes: a piece whose keys/values are cached is skipped, the
   others are computed and kept; logits only for the last position (the lm_head over a whole
   prompt is a fifth of a small model's prefill).
2. A `RunningBatch` holds the rows decoding together: one preallocated key/value buffer per layer
   with every row's keys/values right-aligned at the column the next step writes, so a step writes
   in place (a growing cache copies all of it at every step). New rows join between steps (the
   buffer is rebuilt around them); a finished row (end-of-sequence or its own token limit) leaves
   at once, and padding no remaining row needs is dropped.
3. Each step is one batched forward; every chosen token is handed out at once (streaming), the
   last one of a row with its whole answer (a finished answer never waits for the others).

Greedy, so a row's tokens depend on its prompt only: the pieces of a prompt are fixed by the
prompt, and rows never see each other (attention is masked per row).
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field

from ray_app.engines.slm import GreedyAnswer, stop_token_ids
from ray_app.serve.prefix_cache import PrefixKvCache


@dataclass(frozen=True)
class GenerationJob:
    model_name: str
    prompt_ids: list[int]  # the messages with the chat template applied, tokenized once at the ingress
    max_new_tokens: int
    prefix_ends: tuple[int, ...] = ()  # where the prompt's shareable prefixes end (prefix_cache.py)
    request_id: str | None = None  # names the job for `MultiAdapterModel.cancel`


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
    started: float  # when the job was handed to the decoder (its answer's latency counts from here)
    tokens: list[int] = field(default_factory=list)


class RunningBatch:
    """The rows of one model that decode together (the model's adapter must be active on each call)."""

    def __init__(self, model, tokenizer, device, prefix_cache: PrefixKvCache | None = None):
        self.model, self.tokenizer, self.device, self.prefix_cache = model, tokenizer, device, prefix_cache
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.rows: list[Row] = []
        self.layers: list = []  # PreallocatedLayer per model layer, [rows, kv_heads, width, head_dim]
        self.attention = None  # [rows, width]: 1 where a row has a real position
        self.positions = None  # [rows]: the position of the token each row feeds next
        self.next_tokens = None  # [rows]: the token each row feeds next
        self.filled = 0  # columns in use; every row's next token goes to column `filled`

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, jobs: list[tuple[int, GenerationJob, float]]) -> list[StepToken]:
        """Prefill `(key, job, started)` rows and add them; returns each one's first token."""
        import torch

        with torch.inference_mode():
            joining, chosen = [], []
            for key, job, started in jobs:
                layers, logits = prefill(self.model, job, self.device, self.prefix_cache)
                row = Row(job, key, started)
                token = int(logits.argmax(dim=-1))
                step_token = self._take(row, token)
                chosen.append(step_token)
                if not step_token.finished:
                    joining.append((row, layers, token))
            if joining:
                self._rebuild(joining)
        return chosen

    def step(self) -> list[StepToken]:
        """One decode step for every row: the tokens chosen, finished rows removed."""
        import torch

        with torch.inference_mode():
            self.attention[:, self.filled] = 1
            self.filled += 1
            output = self.model(
                input_ids=self.next_tokens[:, None],
                attention_mask=self.attention[:, : self.filled],
                position_ids=self.positions[:, None],
                use_cache=True,
                **{cache_keyword(self.model): self.cache},
            )
            self.positions = self.positions + 1
            self.next_tokens = output.logits[:, -1, :].argmax(dim=-1)
            chosen = [self._take(row, token) for row, token in zip(self.rows, self.next_tokens.tolist(), strict=True)]
            keep = [index for index, token in enumerate(chosen) if not token.finished]
            if len(keep) < len(self.rows):
                self._keep(keep)
        return chosen

    def _take(self, row: Row, token: int) -> StepToken:
        row.tokens.append(token)
        if token in self.stop_ids or len(row.tokens) >= row.job.max_new_tokens:
            return StepToken(row.key, token, greedy_answer(self.tokenizer, row, self.stop_ids))
        return StepToken(row.key, token)

    def drop(self, keys: set[int]) -> list[Row]:
        """Take the rows with these keys out of the batch (their jobs were cancelled); returns them."""
        dropped = [row for row in self.rows if row.key in keys]
        if dropped:
            self._keep([index for index, row in enumerate(self.rows) if row.key not in keys])
        return dropped

    def _keep(self, keep: list[int]) -> None:
        """Keep the rows at `keep`; drop leading columns that are padding for every kept row."""
        import torch

        self.rows = [self.rows[index] for index in keep]
        if not keep:
            self.layers, self.attention, self.positions, self.next_tokens, self.filled = [], None, None, None, 0
            return
        index = torch.tensor(keep, device=self.device)
        self.next_tokens, self.positions = self.next_tokens[index], self.positions[index]
        attention = self.attention[index]
        padding = int((attention[:, : self.filled].cumsum(dim=1) == 0).sum(dim=1).min())
        self.attention, self.filled = attention[:, padding:], self.filled - padding
        for layer in self.layers:
            layer.select(index, padding)

    def _rebuild(self, joining: list[tuple[Row, tuple, int]]) -> None:
        """Lay the running rows and the joining ones out in new buffers, all aligned at one column."""
        import torch

        filled = max([self.filled] + [len(row.job.prompt_ids) for row, _, _ in joining])
        rows = self.rows + [row for row, _, _ in joining]
        room = max(row.job.max_new_tokens - len(row.tokens) for row in rows)  # steps still to write
        width, shift, count = filled + room, filled - self.filled, len(rows)
        attention = torch.zeros(count, width, dtype=torch.long, device=self.device)
        if self.rows:
            attention[: len(self.rows), shift:filled] = self.attention[:, : self.filled]
        for offset, (row, _, _) in enumerate(joining):
            attention[len(self.rows) + offset, filled - len(row.job.prompt_ids) : filled] = 1
        layers = []
        template_keys = joining[0][1][0][0]
        for layer_index in range(len(joining[0][1])):
            keys = torch.zeros(count, template_keys.shape[1], width, template_keys.shape[3],
                               dtype=template_keys.dtype, device=template_keys.device)  # fmt: skip
            values = torch.zeros_like(keys)
            if self.rows:
                old = self.layers[layer_index]
                keys[: len(self.rows), :, shift:filled] = old.keys
                values[: len(self.rows), :, shift:filled] = old.values
            for offset, (_, prompt_layers, _) in enumerate(joining):
                prompt_keys, prompt_values = prompt_layers[layer_index]
                start = filled - prompt_keys.shape[2]
                keys[len(self.rows) + offset, :, start:filled] = prompt_keys[0]
                values[len(self.rows) + offset, :, start:filled] = prompt_values[0]
            layers.append(preallocated_layer_class()(keys, values, filled))
        joining_tokens = [token for _, _, token in joining]
        joining_positions = [len(row.job.prompt_ids) for row, _, _ in joining]
        if self.rows:
            self.next_tokens = torch.cat([self.next_tokens, torch.tensor(joining_tokens, device=self.device)])
            self.positions = torch.cat([self.positions, torch.tensor(joining_positions, device=self.device)])
        else:
            self.next_tokens = torch.tensor(joining_tokens, device=self.device)
            self.positions = torch.tensor(joining_positions, device=self.device)
        self.rows, self.layers, self.attention, self.filled = rows, layers, attention, filled

    @property
    def cache(self):
        from transformers import DynamicCache

        cache = DynamicCache()
        cache.layers = self.layers
        return cache


def greedy_answer(tokenizer, row: Row, stop_ids: set[int]) -> GreedyAnswer:
    return GreedyAnswer(
        text=tokenizer.decode(row.tokens, skip_special_tokens=True),
        prompt_tokens=len(row.job.prompt_ids),
        completion_tokens=len(row.tokens),
        latency_s=time.perf_counter() - row.started,  # from hand-over to the decoder until this answer was complete
        token_ids=tuple(row.tokens),
        stopped=row.tokens[-1] in stop_ids,
    )


def prefill(model, job: GenerationJob, device, prefix_cache: PrefixKvCache | None):
    """(per-layer (keys, values) of the whole prompt, logits of its last position [1, vocab]).

    The prompt runs in its pieces whether or not a prefix is cached, so a hit and a miss compute
    the same thing; the longest cached prefix is loaded and only the pieces after it run.
    """
    import torch
    from transformers import DynamicCache

    ids = job.prompt_ids
    ends = [end for end in job.prefix_ends if 0 < end < len(ids)] if prefix_cache is not None else []
    cache, start = DynamicCache(), 0
    for end in reversed(ends):
        entry = prefix_cache.get(job.model_name, tuple(ids[:end]))
        if entry is not None:
            for layer, (keys, values) in enumerate(entry.layers):
                cache.update(keys, values, layer)
            start = end
            break
    with torch.inference_mode():
        for end in [end for end in ends if end > start] + [len(ids)]:
            output = model(  # writes the piece's keys/values into `cache`
                input_ids=torch.tensor([ids[start:end]], device=device),
                use_cache=True,
                logits_to_keep=1,
                **{cache_keyword(model): cache},
            )
            if end < len(ids):
                prefix_cache.put(job.model_name, tuple(ids[:end]), layer_tensors(cache))
            start = end
    return layer_tensors(cache), output.logits[:, -1, :]


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

        def select(self, index, padding: int) -> None:
            """Keep the batch rows in `index` and drop the first `padding` columns (padding no kept row uses)."""
            self.buffer_keys = self.buffer_keys[index, :, padding:]
            self.buffer_values = self.buffer_values[index, :, padding:]
            self.filled -= padding
            self._expose()

    return PreallocatedLayer
