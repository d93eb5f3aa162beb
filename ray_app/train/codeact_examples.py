"""CodeAct rows → pre-tokenized training examples whose loss falls on the student's own turns only.

A row's messages are rendered with the model's chat template (role and content only: the
`observation` mark is for us, not the template) and tokenized as evaluation and serving tokenize a
conversation (`engines.slm.prompt_ids`: the template's text, no extra special tokens). With
`loss_on="assistant"` only the tokens of each assistant message's content and its end-of-turn token
(`<|im_end|>` in SmolLM2's ChatML, read off the template) carry a label; system, task and every
observation turn, and each turn's header, are labelled -100. `loss_on="all"` labels every token of the
same example (an ablation).

Where each assistant content lies in the text comes from rendering the conversation one message at a
time: the text of messages[:i + 1] must extend the text of messages[:i] (true of ChatML templates),
and message i's piece must be the generation prompt's header, then the content, then the end of turn.

A row longer than `max_length` tokens keeps its prefix up to the end of the last assistant turn that
fits (a shorter trajectory whose every trained turn is whole), the same cut for both `loss_on`
values; a row with no assistant turn that fits, or none at all, is fully masked: it is reported with
its reason and left out, never dropped silently (TRL would drop it without a word).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and TRL's collator) ignores
SENTINEL = "\ue000slm-swap-sentinel\ue000"  # a content no template adds text around by itself


class ChatTemplateError(ValueError):
    """The tokenizer's chat template does not render conversations in the incremental form this needs."""


@dataclass(frozen=True)
class CodeactExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss
    trained_tokens: int
    masked_tokens: int
    full_tokens: int  # the row's length before the max_length cut
    fully_masked_reason: str | None = None  # set: no token carries loss; the row is left out

    @property
    def truncated(self) -> bool:
        return self.full_tokens > len(self.input_ids)


@dataclass
class TokenCounts:
    """What tokenizing a split gave: kept examples, trained and masked tokens, truncated and left-out rows."""

    rows: int = 0
    examples: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    row_tokens: list[int] = field(default_factory=list)  # each row's full length, before any cut
    truncated: dict[str, int] = field(default_factory=dict)  # trajectory id -> tokens cut off
    fully_masked: dict[str, str] = field(default_factory=dict)  # trajectory id -> why no token carries loss

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "examples": self.examples,
            "trained_tokens": self.trained_tokens,
            "masked_tokens": self.masked_tokens,
            "row_tokens": {
                "mean": round(statistics.fmean(self.row_tokens), 1) if self.row_tokens else None,
                "max": max(self.row_tokens, default=None),
            },
            "truncated": {
                "rows": len(self.truncated),
                "tokens_cut": sum(self.truncated.values()),
                "trajectory_ids": sorted(self.truncated),
            },
            "fully_masked": {"rows": len(self.fully_masked), "trajectory_ids": dict(sorted(self.fully_masked.items()))},
        }


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def end_of_turn_text(tokenizer) -> str:
    """The text the template puts right after an assistant turn's content, whitespace after it aside
    (`<|im_end|>` for ChatML): the student generates it to end its turn, so it carries loss."""
    text = render(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": SENTINEL}])
    after = text[text.index(SENTINEL) + len(SENTINEL) :]
    marker = after.lstrip()
    if not marker:
        raise ChatTemplateError("the chat template writes nothing after an assistant turn: no end-of-turn marker")
    return after[: len(after) - len(marker)] + marker.split()[0]  # "<|im_end|>"; " </s>" keeps its space


def assistant_spans(tokenizer, messages: list[dict[str, str]], end_of_turn: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and, for each assistant message, the characters [start, end) of its
    content and end-of-turn marker in that text."""
    text, spans = "", []
    for index, message in enumerate(messages):
        extended = render(tokenizer, messages[: index + 1])
        if not extended.startswith(text):
            raise ChatTemplateError(f"message {index}: the chat template does not render messages incrementally")
        if message["role"] == "assistant":
            header = render(tokenizer, messages[:index], generation_prompt=True)[len(text) :]
            piece = extended[len(text) :]
            expected = header + message["content"] + end_of_turn
            if not piece.startswith(expected):
                raise ChatTemplateError(
                    f"message {index}: the template renders an assistant turn as {piece[:80]!r}, expected the "
                    f"generation prompt {header!r}, the content, then {end_of_turn!r}"
                )
            start = len(text) + len(header)
            spans.append((start, start + len(message["content"]) + len(end_of_turn)))
        text = extended
    return text, spans


def codeact_training_example(
    tokenizer,
    messages: list[dict[str, Any]],
    loss_on: str = "assistant",
    max_length: int | None = None,
    end_of_turn: str | None = None,
) -> CodeactExample:
    """One row's input ids and labels (see the module docstring)."""
    end_of_turn = end_of_turn or end_of_turn_text(tokenizer)
    text, spans = assistant_spans(tokenizer, template_messages(messages), end_of_turn)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    # A token carries loss when it starts inside a span; span_ends[k]: tokens up to the end of span k.
    in_span = [any(start <= begin < end for start, end in spans) for begin, _ in offsets]
    span_ends = [sum(1 for begin, _ in offsets if begin < end) for _, end in spans]
    full = len(input_ids)
    if not spans:
        return CodeactExample(input_ids, [IGNORE_INDEX] * full, 0, full, full, "no assistant turn")
    keep = full
    if max_length is not None and full > max_length:
        fitting = [end for end in span_ends if end <= max_length]
        if not fitting:
            reason = f"its first assistant turn ends at token {span_ends[0]}, past max_length {max_length}"
            return CodeactExample(input_ids[:max_length], [IGNORE_INDEX] * max_length, 0, max_length, full, reason)
        keep = fitting[-1]
    input_ids, in_span = input_ids[:keep], in_span[:keep]
    if loss_on == "all":
        labels = list(input_ids)
    elif loss_on == "assistant":
        labels = [token if trained else IGNORE_INDEX for token, trained in zip(input_ids, in_span, strict=True)]
    else:
        raise ValueError(f"loss_on must be 'assistant' or 'all', got {loss_on!r}")
    trained = sum(label != IGNORE_INDEX for label in labels)
    reason = None if trained else "no token of an assistant turn carries a label"
    return CodeactExample(input_ids, labels, trained, keep - trained, full, reason)


def codeact_examples(
    tokenizer, rows: list[dict[str, Any]], loss_on: str, max_length: int
) -> tuple[list[dict[str, list[int]]], TokenCounts]:
    """A split's rows → SFTTrainer's pre-tokenized examples (`input_ids`, `labels`) and their counts;
    fully masked rows are counted with their reason and left out."""
    end_of_turn = end_of_turn_text(tokenizer)
    examples, counts = [], TokenCounts(rows=len(rows))
    for row in rows:
        example = codeact_training_example(tokenizer, row["messages"], loss_on, max_length, end_of_turn)
        counts.row_tokens.append(example.full_tokens)
        if example.fully_masked_reason is not None:
            counts.fully_masked[row["trajectory_id"]] = example.fully_masked_reason
            continue
        if example.truncated:
            counts.truncated[row["trajectory_id"]] = example.full_tokens - len(example.input_ids)
        counts.trained_tokens += example.trained_tokens
        counts.masked_tokens += example.masked_tokens
        examples.append({"input_ids": example.input_ids, "labels": example.labels})
    counts.examples = len(examples)
    return examples, counts
