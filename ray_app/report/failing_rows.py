"""The first test rows a model fails, with the gold answer beside its prediction.

A row fails when it misses at least one core metric (`CORE_METRICS`), scored per row exactly as the
decide step scores it (`row_hits`). The gold is the split's row; when the predictions file does
not hold the split's rows (a stale evaluation), the report says so and shows the gold the
predictions were scored against. Long texts are cut; line breaks are written as \\n so each text
stays on one line of a fenced block (model outputs often carry ``` fences, so the fence grows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ray_app.data.rows import Row, Track
from ray_app.decide.model_results import row_hits
from ray_app.metrics import CORE_METRICS, PredictionRecord
from ray_app.prompts import PromptFormatError, parse_toolcall_prompt
from ray_app.prompts.templates import template_parts
from ray_app.report import markdown as md

REQUEST_CHARS = 160
ANSWER_CHARS = 300


@dataclass(frozen=True)
class FailingRow:
    index: int  # 0-based; the split file's line is index + 1
    missed: tuple[str, ...]  # the core metrics this row misses
    request: str  # the user text of the prompt
    gold: str
    prediction: str


def core_misses(track: Track, records: Sequence[PredictionRecord]) -> list[tuple[str, ...]]:
    """Per row, the core metrics it misses (empty: the row passes)."""
    hits = row_hits(track, records)
    return [tuple(metric for metric in CORE_METRICS[track] if not hits[metric][index]) for index in range(len(records))]


def request_text(prompt: str) -> str:
    """The user's request inside a prompt built from the project's templates, else the whole prompt."""
    try:
        return parse_toolcall_prompt(prompt).query
    except PromptFormatError:
        pass
    # Structured prompts end with the same "...Request: {{query}}" tail; find its head from the template.
    before_query, _ = template_parts("structured", "query")
    marker = before_query.rsplit("}}", 1)[-1]
    head, found, query = prompt.rpartition(marker)
    return query if found and head else prompt


def split_mismatch(records: Sequence[PredictionRecord], split_rows: Sequence[Row]) -> str | None:
    """Why these predictions do not answer this split (row count, or the first differing row), or None."""
    if len(records) != len(split_rows):
        return f"{len(records)} predictions for {len(split_rows)} split rows"
    for record, row in zip(records, split_rows, strict=True):
        for field in ("prompt", "completion"):
            if getattr(record, field) != getattr(row, field):
                return f"row {record.index} (split line {record.index + 1}) has another {field}"
    return None


def first_failing_rows(
    track: Track, records: Sequence[PredictionRecord], split_rows: Sequence[Row] | None, limit: int
) -> tuple[int, list[FailingRow]]:
    """(rows failing any core metric, the first `limit` of them in split order)."""
    misses = core_misses(track, records)
    failing = [index for index, missed in enumerate(misses) if missed]
    shown = []
    for index in failing[:limit]:
        record = records[index]
        gold = split_rows[index].completion if split_rows is not None else record.completion
        shown.append(FailingRow(index, misses[index], request_text(record.prompt), gold, record.prediction))
    return len(failing), shown


def render_failing_row(row: FailingRow, split_name: str) -> str:
    missed = ", ".join(md.code(metric) for metric in row.missed)
    body = "\n".join(
        [
            f"request:    {md.shorten(md.one_line(row.request), REQUEST_CHARS)}",
            f"gold:       {md.shorten(md.one_line(row.gold), ANSWER_CHARS)}",
            f"prediction: {md.shorten(md.one_line(row.prediction), ANSWER_CHARS) or '(empty)'}",
        ]
    )
    return f"Row {row.index} ({md.code(split_name)} line {row.index + 1}), missed {missed}:\n\n{md.code_block(body)}"
