"""Is a CodeAct run's answer right? One pure function per task kind, each reusing the project's metric.

- toolcall: the run must finish (call `final_answer`), and the last tool call that the stub accepted
  must be the gold call: same tool, arguments equal under `lenient_args_match` with the tool's schema
  (the toolcall track's lenient metric). The value passed to `final_answer` does not matter.
- structured: the final answer must equal the gold JSON as the structured track's exact match says
  (`score_structured_row`: canonical JSON, so key order never matters but 1 vs 1.0 does). A string
  answer is read as the JSON text the model would have written (as on the structured track).
- multistep: the exact final value: numbers within 1e-9 (a bool is never a number), strings equal
  after stripping, anything else canonically equal.

The verdict's `code` is stable (reports count it); its `detail` says what exactly went wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ray_app.codeact.records import CodeactTask, ToolCallRecord
from ray_app.json_text import canonical_json
from ray_app.metrics.lenient_args import lenient_args_match
from ray_app.metrics.structured import score_structured_row

AnswerCode = Literal["correct", "no_final_answer", "wrong_call", "wrong_final_answer"]
ANSWER_CODES: tuple[AnswerCode, ...] = ("correct", "no_final_answer", "wrong_call", "wrong_final_answer")
NUMBER_TOLERANCE = 1e-9


@dataclass(frozen=True)
class AnswerCheck:
    code: AnswerCode
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.code == "correct"

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AnswerCheck:
        return cls(code=value["code"], detail=value.get("detail", ""))


def check_answer(
    task: CodeactTask, final_answer: Any, has_final_answer: bool, tool_calls: list[ToolCallRecord]
) -> AnswerCheck:
    """The verdict on one run of `task` (see the module docstring for each kind's rule)."""
    if not has_final_answer:
        return AnswerCheck("no_final_answer", "the run ended without calling final_answer")
    if task.kind == "toolcall":
        return check_toolcall(task, tool_calls)
    if task.kind == "structured":
        return check_structured(task.gold, final_answer)
    return check_exact_value(task.gold, final_answer)


def check_toolcall(task: CodeactTask, tool_calls: list[ToolCallRecord]) -> AnswerCheck:
    accepted = [call for call in tool_calls if call.error is None]
    gold_name, gold_arguments = task.gold["name"], task.gold["arguments"]
    if not accepted:
        refused = f" ({len(tool_calls)} refused by the stub)" if tool_calls else ""
        return AnswerCheck("wrong_call", f"no successful tool call{refused}; expected {gold_name}")
    call = accepted[-1]
    if call.name != gold_name:
        return AnswerCheck("wrong_call", f"last call was to {call.name}, expected {gold_name}")
    schema = next((tool.parameters for tool in task.tools if tool.name == gold_name), None)
    if not lenient_args_match(call.arguments, gold_arguments, schema):
        return AnswerCheck(
            "wrong_call",
            f"{gold_name} called with {canonical_json(call.arguments)}, expected {canonical_json(gold_arguments)}",
        )
    return AnswerCheck("correct")


def check_structured(gold: Any, final_answer: Any) -> AnswerCheck:
    try:
        prediction = final_answer if isinstance(final_answer, str) else canonical_json(final_answer)
    except (TypeError, ValueError):
        return AnswerCheck("wrong_final_answer", f"final answer is not JSON: {type(final_answer).__name__}")
    score = score_structured_row(canonical_json(gold), prediction)
    # A JSON string gold answered with that very string (not its JSON text) is right too.
    if score.exact_match or (isinstance(final_answer, str) and final_answer == gold):
        return AnswerCheck("correct")
    if not score.json_valid:
        return AnswerCheck("wrong_final_answer", f"final answer is not JSON: {_describe(final_answer)}")
    return AnswerCheck(
        "wrong_final_answer",
        f"got {_short(prediction)}, expected {_short(canonical_json(gold))} "
        f"({score.correct_fields}/{score.gold_fields} fields right)",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_exact_value(gold: Any, final_answer: Any) -> AnswerCheck:
    if _is_number(gold):
        if not _is_number(final_answer):
            return AnswerCheck("wrong_final_answer", f"expected the number {gold}, got {_describe(final_answer)}")
        if math.isfinite(final_answer) and abs(final_answer - gold) <= NUMBER_TOLERANCE:
            return AnswerCheck("correct")
        return AnswerCheck("wrong_final_answer", f"got {final_answer!r}, expected {gold!r}")
    if isinstance(gold, str):
        if isinstance(final_answer, str) and final_answer.strip() == gold.strip():
            return AnswerCheck("correct")
        return AnswerCheck("wrong_final_answer", f"got {_describe(final_answer)}, expected {gold!r}")
    try:
        equal = canonical_json(final_answer) == canonical_json(gold)
    except (TypeError, ValueError):
        equal = False
    if equal:
        return AnswerCheck("correct")
    return AnswerCheck("wrong_final_answer", f"got {_describe(final_answer)}, expected {_short(canonical_json(gold))}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_short(repr(value))}"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
