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
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ray_app.engines.constrained.constraints import ConstraintError, DecodingConstraint
from ray_app.engines.constrained.grammar import constraint_grammar

COMPILED_GRAMMARS_KEPT = 256  # recent constraints' compiled grammars, least recently used out first


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int, stop_ids: set[int]):
        self.hf_tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, sorted(stop_ids)
        self.mask_words = (vocab_size + 31) // 32  # 32 tokens per int32 word of a mask
        self._llg_tokenizer = None
        self._compiled: OrderedDict[DecodingConstraint, object] = OrderedDict()
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
        return RowGrammar(self.compiled(constraint).deep_copy(), self.mask_words)


class RowGrammar:
    def __init__(self, matcher, mask_words: int):
        self.matcher, self.mask_words = matcher, mask_words

    def fill_mask(self, words) -> None:
        """Write the allowed next tokens into `words` (a contiguous int32 numpy row of `mask_words`)."""
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)

    def take(self, token: int) -> bool:
        """Advance over the chosen token; True when the answer must end here (the grammar is complete, only
        end-of-sequence may follow, or it refused the token: a masked choice never is refused)."""
        return not self.matcher.consume_token(token) or self.matcher.is_stopped()

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
