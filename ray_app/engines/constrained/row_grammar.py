"""Constraints as token masks at decode time (llguidance): compiled once per constraint, one matcher per row.

`GrammarCompiler` belongs to a loaded model: it wraps the model's tokenizer for llguidance on first
use (0.4-1.7 s measured; never for a run without constraints, which never imports llguidance) and keeps
the compiled grammars of recent constraints (an agent sends the same tools on every call), so a row
starts from a copy. `RowGrammar` is one row's state: the mask of tokens its grammar allows next, the
token it took. `mask_logits` sets the forbidden tokens of the constrained rows of a batch to -inf in
place; rows without a constraint are not touched, so their argmax, and their answer, stay the bytes
they are without this module. End-of-sequence is in a row's mask only where its grammar may end.

llguidance was picked by measurement (benchmarks/grammar_libraries.py, SmolLM2's tokenizer, a
five-tool wrapper grammar): it compiles a request's grammar in ~2-3 ms (xgrammar 16-38 ms,
outlines-core 0.4-1.1 s: every request brings its own tools), masks a row in ~15 µs at the median
(xgrammar ~2 µs; both far below a decode step), expresses "auto" as a lazy lexeme in one grammar,
and installs from PyPI with no dependencies (xgrammar pulls torch and triton; outlines-core has
regular expressions only, no "auto").

A row also finishes within its token limit (`RowGrammar.within_budget`): a mask alone lets a model
write a string, a number or a list until the limit cuts it, and a cut answer does not parse. In its
last `CLOSING_WINDOW` tokens a row takes the model's token only if the grammar can still be completed
in the tokens left after it; otherwise it takes the first token of a short completion found from
where it stands (`closing_path`: the grammar's forced tokens where there are some, else the allowed
token that leaves the least of the JSON open, `Nesting`: `"}` before `"`, `""` before `"`...). A row
that ends early, as a well-trained one does, never meets this.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from ray_app.engines.constrained.constraints import ConstraintError, DecodingConstraint, ToolCallConstraint
from ray_app.engines.constrained.grammar import constraint_grammar, wrapper_pieces

COMPILED_GRAMMARS_KEPT = 256  # recent constraints' compiled grammars, least recently used out first
CLOSING_WINDOW = 64  # a row checks that its grammar can still complete only in its last this-many tokens
# Texts that finish an answer soonest, best first: what closes strings, arrays and objects (more levels
# first), then the shortest whole values and separators. Each counts where the tokenizer writes it as
# one token.
CLOSING_TEXTS = ('"}}', '"]}', '"}]', '}}}', '"}', '"]', '}}', ']}', '}]', '"', '}', ']',
                 "0", '""', "[]", "{}", "null", "true", "false", ",", "[", "{")  # fmt: skip


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int, stop_ids: set[int]):
        self.hf_tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, sorted(stop_ids)
        self.mask_words = (vocab_size + 31) // 32  # 32 tokens per int32 word of a mask
        self._llg_tokenizer = None
        self._compiled: OrderedDict[DecodingConstraint, object] = OrderedDict()
        self._closing_tokens: ClosingTokens | None = None
        self._lock = threading.Lock()  # Serve checks at its ingress while the decode thread admits rows

    def _tokenizer(self):
        if self._llg_tokenizer is None:
            import llguidance.hf

            if not getattr(self.hf_tokenizer, "is_fast", False):
                raise ConstraintError("constrained decoding needs a fast (Rust) tokenizer; this model has a slow one")
            self._llg_tokenizer = llguidance.hf.from_tokenizer(
                self.hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.stop_ids
            )
        return self._llg_tokenizer

    def compiled(self, constraint: DecodingConstraint):
        """The compiled grammar of `constraint` (a matcher in its start state, never advanced itself)."""
        import llguidance

        with self._lock:
            matcher = self._compiled.get(constraint)
            if matcher is not None:
                self._compiled.move_to_end(constraint)
                return matcher
            matcher = llguidance.LLMatcher(self._tokenizer(), constraint_grammar(constraint), log_level=0)
            if matcher.is_error():
                reason = matcher.get_error().splitlines()[0]  # the rest quotes the grammar text back
                raise ConstraintError(f"cannot compile the grammar of {constraint.describe()}: {reason}")
            self._compiled[constraint] = matcher
            while len(self._compiled) > COMPILED_GRAMMARS_KEPT:
                self._compiled.popitem(last=False)
            return matcher

    def check(self, constraint: DecodingConstraint) -> None:
        """Compile now (at the request's ingress), so a bad schema fails before the row queues."""
        self.compiled(constraint)

    def start(self, constraint: DecodingConstraint) -> RowGrammar:
        """A new row's grammar state."""
        matcher = self.compiled(constraint).deep_copy()
        if self._closing_tokens is None:
            self._closing_tokens = ClosingTokens(self.hf_tokenizer, self.vocab_size, self.stop_ids)
        return RowGrammar(matcher, self.mask_words, self._closing_tokens, isinstance(constraint, ToolCallConstraint))


class ClosingTokens:
    """What `closing_path` chooses from: the tokens of `CLOSING_TEXTS` that are one token each (after
    end-of-sequence), in that order, and each token's text (kept once decoded)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        import numpy

        self.tokenizer = tokenizer
        single = [tokenizer.encode(text, add_special_tokens=False) for text in CLOSING_TEXTS]
        ranked = list(stop_ids) + [ids[0] for ids in single if len(ids) == 1]
        self.ranked = list(dict.fromkeys(token for token in ranked if token < vocab_size))
        self.special = numpy.zeros(vocab_size, dtype=bool)  # never a fallback choice
        special = [token for token in tokenizer.all_special_ids if token < vocab_size and token not in stop_ids]
        self.special[special] = True
        self._texts: dict[int, str] = {}

    def text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.tokenizer.decode([token])
        return text

    def candidates(self, bitmask: bytes) -> list[int]:
        """The allowed tokens under `bitmask` (llguidance's: bit b of byte k allows token 8k + b) worth
        trying: the ranked ones, then the lowest allowed id that is not special (a byte or a short piece)."""
        import numpy

        allowed = [token for token in self.ranked if bitmask[token >> 3] >> (token & 7) & 1]
        bits = numpy.unpackbits(numpy.frombuffer(bitmask, dtype=numpy.uint8), bitorder="little")
        fallback = bits[: len(self.special)].astype(bool) & ~self.special
        if fallback.any():
            allowed.append(int(fallback.argmax()))
        return allowed


@dataclass(frozen=True)
class Nesting:
    """How much of an answer's JSON is open: strings, arrays and objects not yet closed. In a tool call,
    the JSON starts after the wrapper's head (`<tool_call name="NAME">`); text before it is kept in
    `before_json` until then (None: inside the JSON, or none to wait for)."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    before_json: str | None = None

    @property
    def open(self) -> int:
        return self.depth + self.in_string

    def after(self, text: str) -> Nesting:
        if self.before_json is not None:
            text = self.before_json + text
            head, after_name, _ = wrapper_pieces()
            opened = text.find(head)
            named = -1 if opened < 0 else text.find(after_name, opened + len(head))
            if named < 0:
                return replace(self, before_json=text)
            return Nesting().after(text[named + len(after_name) :])
        depth, in_string, escaped = self.depth, self.in_string, self.escaped
        for character in text:
            if in_string:
                if escaped:
                    escaped = False
                elif character == "\\":
                    escaped = True
                elif character == '"':
                    in_string = False
            elif character == '"':
                in_string = True
            elif character in "{[":
                depth += 1
            elif character in "}]":
                depth -= 1
        return Nesting(depth, in_string, escaped)


def closing_path(matcher, nesting: Nesting, limit: int, closing: ClosingTokens) -> list[int] | None:
    """Tokens that take `matcher` (left as it is) to where its grammar may end, at most `limit` of them;
    None when this search finds none that short. Where the grammar forces no token, it takes the allowed
    candidate that leaves the least JSON open (the first in `CLOSING_TEXTS` order among equals)."""
    matcher = matcher.deep_copy()
    path: list[int] = []
    while not matcher.is_accepting():
        if matcher.is_error() or len(path) >= limit:
            return None
        forced = matcher.compute_ff_tokens()
        if not forced:
            candidates = closing.candidates(matcher.compute_bitmask())
            if not candidates:
                return None
            after = [nesting.after(closing.text(token)).open for token in candidates]
            forced = [candidates[after.index(min(after))]]
        for token in forced:
            if len(path) >= limit or not matcher.consume_token(token):
                return None
            path.append(token)
            nesting = nesting.after(closing.text(token))
    return path


class RowGrammar:
    def __init__(self, matcher, mask_words: int, closing: ClosingTokens, wrapped: bool):
        self.matcher, self.mask_words, self.closing = matcher, mask_words, closing
        self.nesting = Nesting(before_json="" if wrapped else None)

    def fill_mask(self, words) -> None:
        """Write the allowed next tokens into `words` (a contiguous int32 numpy row of `mask_words`)."""
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)

    def take(self, token: int) -> bool:
        """Advance over the chosen token; True when the answer must end here (the grammar is complete, only
        end-of-sequence may follow, or it refused the token: a masked choice never is refused)."""
        self.nesting = self.nesting.after(self.closing.text(token))
        return not self.matcher.consume_token(token) or self.matcher.is_stopped()

    def within_budget(self, token: int, remaining: int) -> int:
        """`token` (the model's masked choice) when the grammar can still be completed in the `remaining - 1`
        tokens left after it, else the first token of a completion that fits in `remaining` (the tokens
        the row may still write, this one included); `token` when none is found either."""
        if remaining > CLOSING_WINDOW:
            return token
        after = self.matcher.deep_copy()
        nesting = self.nesting.after(self.closing.text(token))
        if after.consume_token(token) and closing_path(after, nesting, remaining - 1, self.closing) is not None:
            return token
        path = closing_path(self.matcher, self.nesting, remaining, self.closing)
        return path[0] if path else token

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None


def mask_logits(logits, guided: list[tuple[int, RowGrammar]]) -> None:
    """`logits[row, token] = -inf` for every token the row's grammar forbids, for each (row, grammar) in
    `guided`; the other rows of `logits` ([rows, vocab]) are left as they are."""
    import numpy
    import torch

    words = numpy.empty((len(guided), guided[0][1].mask_words), dtype=numpy.int32)
    for index, (_, grammar) in enumerate(guided):
        grammar.fill_mask(words[index])
    # token 32·w + b is bit b of word w; on a little-endian machine that is bit b % 8 of byte 4·w + b // 8
    bits = numpy.unpackbits(words.view(numpy.uint8), axis=1, bitorder="little")[:, : logits.shape[-1]]
    forbidden = bits == 0
    if logits.device.type == "cpu":
        # numpy writes into the tensor's memory on one thread: torch would split a fill this small over its
        # thread pool, whose hand-offs cost more than the fill on a busy machine
        for index, (row, _) in enumerate(guided):
            if logits.dtype == torch.bfloat16:  # numpy has no bfloat16: write the bit pattern of -inf
                logits[row].view(torch.int16).numpy()[forbidden[index]] = BFLOAT16_NEGATIVE_INFINITY_BITS
            else:
                logits[row].numpy()[forbidden[index]] = -numpy.inf
        return
    with torch.inference_mode():  # the logits are inference tensors (a prefill's come here outside its block)
        rows = torch.tensor([row for row, _ in guided], device=logits.device)
        logits[rows] = logits[rows].masked_fill(torch.from_numpy(forbidden).to(logits.device), float("-inf"))


BFLOAT16_NEGATIVE_INFINITY_BITS = -128  # 0xFF80 (sign, all exponent bits, no mantissa) read as an int16
