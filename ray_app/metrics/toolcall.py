"""Metrics of the toolcall track: the model must answer with one `<tool_call name="T">{args}</tool_call>`.

Per row (`score_toolcall_row`) and over a split (`toolcall_metrics`):

- `valid_call_rate`: `parse_model_tool_call` accepts the prediction: exactly one wrapper (text
  outside it is tolerated) whose body is a JSON object.
- `name_match_rate`: a valid call whose tool name equals the gold name.
- `args_exact_rate`: a valid call whose arguments have the same `canonical_json` as the gold
  arguments, whatever the name (key order and whitespace never matter; 1 vs 1.0 does).
- `args_lenient_rate`: a valid call with the gold tool name whose arguments match the gold ones under
  `lenient_args_match` (BFCL's AST checker rules: standardised strings, an int for a number but not
  3.0 for an integer, optional parameters at their default, set-like arrays), with the JSON Schema of
  the gold tool's signature recovered from the row's prompt; schema-free when the prompt cannot be
  parsed or does not list the gold tool.

An output that is not a valid call misses all four. Every rate is over every row; rates are
unrounded floats, 0.0 when there are no rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_app.json_text import canonical_json
from ray_app.metrics.lenient_args import lenient_args_match
from ray_app.metrics.rates import rate
from ray_app.prompts import (
    PromptFormatError,
    ToolCallFormatError,
    parse_gold_tool_call,
    parse_model_tool_call,
    parse_toolcall_prompt,
)

TOOLCALL_HITS = ("valid_call", "name_match", "args_exact", "args_lenient")


@dataclass(frozen=True)
class ToolcallRowScore:
    """Which toolcall metrics one prediction hits."""

    valid_call: bool
    name_match: bool
    args_exact: bool
    args_lenient: bool


def gold_parameters_schema(prompt: str | None, tool_name: str) -> dict[str, Any] | None:
    """The JSON Schema of `tool_name`'s parameters as listed in a toolcall prompt, or None."""
    if prompt is None:
        return None
    try:
        signatures = parse_toolcall_prompt(prompt).signatures
    except PromptFormatError:
        return None
    return next((signature["parameters"] for signature in signatures if signature["name"] == tool_name), None)


def score_toolcall_row(gold: str, prediction: str, prompt: str | None = None) -> ToolcallRowScore:
    """Score one prediction against its gold completion (ToolCallFormatError if the gold is malformed).

    `prompt` supplies the tool schemas for the lenient match; without it the match is schema-free.
    """
    gold_call = parse_gold_tool_call(gold)
    try:
        call = parse_model_tool_call(prediction)
    except ToolCallFormatError:
        return ToolcallRowScore(False, False, False, False)
    schema = gold_parameters_schema(prompt, gold_call.name)
    return ToolcallRowScore(
        valid_call=True,
        name_match=call.name == gold_call.name,
        args_exact=canonical_json(call.arguments) == canonical_json(gold_call.arguments),
        # BFCL's checker rejects a call to another tool before it looks at the arguments.
        args_lenient=call.name == gold_call.name and lenient_args_match(call.arguments, gold_call.arguments, schema),
    )


def toolcall_metrics(golds: list[str], predictions: list[str], prompts: list[str]) -> dict[str, float | int]:
    """Rates and counts of the toolcall track over every row (see the module docstring)."""
    if not len(golds) == len(predictions) == len(prompts):
        raise ValueError(
            f"got {len(golds)} gold completions, {len(predictions)} predictions and {len(prompts)} prompts"
        )
    scores = []
    for index, (gold, prediction, prompt) in enumerate(zip(golds, predictions, prompts, strict=True)):
        try:
            scores.append(score_toolcall_row(gold, prediction, prompt))
        except ToolCallFormatError as error:
            raise ValueError(f"row {index}: gold completion is not a tool call: {error}") from None
    rows = len(scores)
    counts = {hit: sum(getattr(score, hit) for score in scores) for hit in TOOLCALL_HITS}
    return {"rows": rows, **counts, **{f"{hit}_rate": rate(count, rows) for hit, count in counts.items()}}
