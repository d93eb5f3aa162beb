"""Prompt prefixes that many requests share, prefilled once and kept (key/value tensors per layer).

Every prompt the app serves is built from `templates.json`: the system text and the instruction
are the same for every request of a track, and an agent sends the same tool signatures on every
call, so only the user's request at the end differs. A prompt is therefore prefilled in pieces
that end where a template's fixed text ends (the end of each literal that comes right before a
`{{placeholder}}`, found in the rendered chat text and mapped to token positions); the key/value
tensors at each piece end are kept, least recently used first out, under a token budget.

The pieces of a prompt depend on that prompt alone, never on what else is cached or batched: a
cache hit skips exactly the computation a miss does, so an answer is the same bytes either way.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ray_app.prompts.templates import PLACEHOLDER_PATTERN, load_templates

MIN_PIECE_TOKENS = 16  # a piece shorter than this costs more in a forward call than it saves


def template_anchors() -> tuple[str, ...]:
    """The fixed template texts after which a prompt's shared prefix may end.

    Each literal that comes right before a placeholder (for example the toolcall instruction before
    `{{tools}}`, and `\\n\\nRequest: ` before `{{query}}`), plus every template without placeholders
    (the system texts).
    """
    anchors = set()
    for text in load_templates().values():
        if not isinstance(text, str):
            continue
        pieces = PLACEHOLDER_PATTERN.split(text)  # literal, name, literal, name, ..., literal
        literals_before_a_placeholder = pieces[0:-1:2] if len(pieces) > 1 else pieces
        anchors.update(literal for literal in literals_before_a_placeholder if len(literal.strip()) >= 8)
    return tuple(sorted(anchors))


def shared_prefix_ends(text: str, token_ends: list[int], anchors: tuple[str, ...]) -> tuple[int, ...]:
    """Token counts at which `text`'s shareable prefixes end, ascending, each piece ≥ MIN_PIECE_TOKENS.

    `token_ends[i]` is the character offset where token i ends (from the tokenizer's offsets), so
    a prefix is always a slice of the prompt's own token ids: nothing is tokenized twice.
    """
    character_ends = set()
    for anchor in anchors:
        start = text.find(anchor)
        while start != -1:
            character_ends.add(start + len(anchor))
            start = text.find(anchor, start + 1)
    ends: list[int] = []
    for character_end in sorted(character_ends):
        tokens = bisect.bisect_right(token_ends, character_end)  # tokens that end at or before it
        if tokens - (ends[-1] if ends else 0) >= MIN_PIECE_TOKENS and len(token_ends) - tokens >= 1:
            ends.append(tokens)
    return tuple(ends)


@dataclass(frozen=True)
class PrefixEntry:
    layers: tuple  # ((keys, values), ...) per layer, each [1, kv_heads, tokens, head_dim]
    tokens: int


class PrefixKvCache:
    """Key/value tensors of prompt prefixes by (model name, token ids); least recently used out first."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple, PrefixEntry] = OrderedDict()
        self.cached_tokens = 0
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()

    def get(self, model_name: str, prefix: tuple[int, ...], count_miss: bool = True) -> PrefixEntry | None:
        """The entry, or None; `count_miss=False` for a second look by a prompt that already missed."""
        key = (model_name, prefix)
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                self.misses += count_miss
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, model_name: str, prefix: tuple[int, ...], layers: tuple) -> None:
        if len(prefix) > self.max_tokens:
            return
        key = (model_name, prefix)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return
            self.entries[key] = PrefixEntry(layers=layers, tokens=len(prefix))
            self.cached_tokens += len(prefix)
            while self.cached_tokens > self.max_tokens:
                _, evicted = self.entries.popitem(last=False)
                self.cached_tokens -= evicted.tokens

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.cached_tokens = 0

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "prefixes": len(self.entries),
                "cached_tokens": self.cached_tokens,
                "max_tokens": self.max_tokens,
                "hits": self.hits,
                "misses": self.misses,
            }
