"""Seeded error injection on the simulated teacher's answers.

Toolcall answers (an assistant message with `tool_calls`):
- `wrong_argument_value` (4 %): one argument value changed (number ±1, string cut short, flag flipped…);
- `wrong_tool` (2 %): another tool offered in the same request, with arguments for that tool;
- `two_tool_calls` (2 %): the gold call followed by a second, perturbed call to the same tool.

Structured answers (text that should be pure JSON):
- `wrong_value` (4 %): one value changed as above;
- `prose_around_json` (3 %): a sentence before and after the JSON;
- `markdown_fence` (2 %): the JSON inside a ```json fence.

Each kind hits exactly round(rate × rows) rows of its track (at least one when the rate is positive),
drawn with the run's seeded RNG, so the observed rate is within 1/rows of the nominal one; a row
gets at most one error. `wrong_tool` only goes to rows that offer more than one tool.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from ray_app.json_text import readable_json

PROSE_BEFORE = ("Sure! Here are the arguments:", "Here is the JSON you asked for:", "Of course.")
PROSE_AFTER = ("Let me know if you need anything else.", "Hope this helps!", "")


def error_count(rate: float, rows: int) -> int:
    """Rows that get an error of this rate: round half up, at least one when the rate is positive."""
    if rate <= 0 or rows == 0:
        return 0
    return min(rows, max(1, int(rate * rows + 0.5)))


def assign_errors(
    rng: random.Random, rows: int, rates: dict[str, float], eligible: dict[str, Callable[[int], bool]] | None = None
) -> list[str | None]:
    """The injected error kind (or None) for each of `rows` rows, in row order."""
    assigned: list[str | None] = [None] * rows
    eligible = eligible or {}
    # Restricted kinds first, so they still find eligible rows.
    for kind in sorted(rates, key=lambda name: (name not in eligible, name)):
        allowed = eligible.get(kind, lambda _index: True)
        free = [index for index in range(rows) if assigned[index] is None and allowed(index)]
        for index in rng.sample(free, min(len(free), error_count(rates[kind], rows))):
            assigned[index] = kind
    return assigned


def pick_exact(rng: random.Random, rows: int, rate: float) -> set[int]:
    """round(rate × rows) row indices (for choosing recorded shapes with an exact share)."""
    return set(rng.sample(range(rows), error_count(rate, rows)))


def perturbed_value(value: Any, rng: random.Random) -> Any:
    """A plausible but wrong replacement for a JSON value (never equal to it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice((-1, 1)) * rng.choice((1, 1, 10))
    if isinstance(value, float):
        return value + rng.choice((-0.5, 0.5))
    if isinstance(value, str):
        if any(char.isdigit() for char in value):
            index = max(i for i, char in enumerate(value) if char.isdigit())
            return value[:index] + str((int(value[index]) + 1) % 10) + value[index + 1 :]
        return value[:-1] if len(value) > 3 else value + "s"
    if isinstance(value, list):
        if len(value) > 1:
            return value[:-1]
        return [perturbed_value(value[0], rng)] if value else ["unknown"]
    if isinstance(value, dict):
        return perturbed_arguments(value, rng) if value else {"unknown": True}
    return "unknown"


def perturbed_arguments(arguments: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of `arguments` with one value (chosen by the RNG) replaced by a wrong one."""
    if not arguments:
        return {"unknown": True}
    key = rng.choice(sorted(arguments))
    return {name: perturbed_value(value, rng) if name == key else value for name, value in arguments.items()}


PLACEHOLDER_BY_TYPE = {"string": "unknown", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}


def arguments_for_tool(signature: dict[str, Any], gold_arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments a confused model would send to `signature`: gold values where names match, else placeholders."""
    parameters = signature["parameters"]
    wanted = parameters.get("required") or list(parameters.get("properties", {}))[:1]
    arguments = {}
    for name in wanted:
        schema = parameters.get("properties", {}).get(name, {})
        kind = schema.get("type") if isinstance(schema.get("type"), str) else "string"
        arguments[name] = gold_arguments.get(name, PLACEHOLDER_BY_TYPE.get(kind, "unknown"))
    return arguments


def structured_answer_text(gold_completion: str, error: str | None, rng: random.Random) -> str:
    """The teacher's structured answer: the gold JSON text, or that text with the injected error."""
    if error is None:
        return gold_completion
    if error == "wrong_value":
        gold = json.loads(gold_completion)
        return readable_json(perturbed_arguments(gold, rng) if isinstance(gold, dict) else perturbed_value(gold, rng))
    if error == "prose_around_json":
        return f"{rng.choice(PROSE_BEFORE)}\n{gold_completion}\n{rng.choice(PROSE_AFTER)}".rstrip()
    if error == "markdown_fence":
        return f"```json\n{gold_completion}\n```"
    raise ValueError(f"unknown structured error kind {error!r} (expected one of wrong_value, prose_around_json, …)")
