"""What the live compare shows: per side, rows done, running core rates and the latest mismatch.

`SideTally` holds one side's finished prediction records. Its running metrics are `score_rows`
over the rows finished so far, so once every row is done they are exactly the metrics
`slm-swap eval` writes for the same predictions. `LiveBoard` holds both sides behind one lock
(teacher and SLM finish batches on different threads) and shows them either as a rich table that
redraws itself (a terminal) or as one plain line per finished batch (a pipe, a file, a CI log).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.table import Table

from ray_app.data.rows import Track
from ray_app.metrics import CORE_METRICS, score_rows, score_structured_row, score_toolcall_row

PREVIEW_CHARS = 40  # of a prediction or gold shown in a mismatch
PREVIEW_CONTEXT_CHARS = 12  # shown before the first differing character


def row_is_exact(track: Track, gold: str, prediction: str, prompt: str) -> bool:
    """The strictest per-row hit of the track: same JSON (structured), same tool and arguments (toolcall)."""
    if track == "structured":
        return score_structured_row(gold, prediction).exact_match
    score = score_toolcall_row(gold, prediction, prompt)
    return score.name_match and score.args_exact


def preview(text: str, start: int = 0, limit: int = PREVIEW_CHARS) -> str:
    """`text` from `start` as one JSON-quoted line (newlines visible as \\n), cut to about `limit` characters."""
    quoted = json.dumps(text[start : start + limit], ensure_ascii=False)
    return ("…" if start else "") + quoted + ("…" if start + limit < len(text) else "")


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@dataclass(frozen=True)
class Mismatch:
    index: int
    gold: str
    prediction: str

    def describe(self) -> str:
        """Both texts from a little before where they first differ (a long common prefix says nothing)."""
        start = max(0, first_difference(self.prediction, self.gold) - PREVIEW_CONTEXT_CHARS)
        return f"row {self.index}: got {preview(self.prediction, start)} want {preview(self.gold, start)}"


@dataclass
class SideTally:
    """One side's progress: finished records by row index, running metrics, the latest miss."""

    label: str
    track: Track
    total: int
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0  # summed generation time of the finished batches
    metrics: dict[str, float | int] = field(default_factory=dict)
    mismatches: int = 0
    latest_mismatch: Mismatch | None = None

    def add_batch(self, records: list[dict[str, Any]], elapsed_s: float) -> None:
        for record in sorted(records, key=lambda r: r["index"]):
            self.records[record["index"]] = record
            if not row_is_exact(self.track, record["completion"], record["prediction"], record["prompt"]):
                self.mismatches += 1
                self.latest_mismatch = Mismatch(record["index"], record["completion"], record["prediction"])
        self.elapsed_s += elapsed_s
        done = [self.records[index] for index in sorted(self.records)]
        self.metrics = score_rows(
            self.track, [r["completion"] for r in done], [r["prediction"] for r in done], [r["prompt"] for r in done]
        )

    @property
    def done(self) -> int:
        return len(self.records)

    def core_rates(self) -> dict[str, float]:
        return {name: float(self.metrics.get(name, 0.0)) for name in CORE_METRICS[self.track]}

    def line(self) -> str:
        """The plain-output line: label, rows done, running core rates, time, the latest mismatch."""
        rates = " ".join(f"{name}={value:.3f}" for name, value in self.core_rates().items())
        latest = self.latest_mismatch.describe() if self.latest_mismatch else "none"
        return (
            f"{self.track} {self.label}: {self.done}/{self.total} rows {rates} {self.elapsed_s:.1f}s "
            f"mismatches={self.mismatches} latest mismatch: {latest}"
        )


class LiveBoard:
    """Both sides' tallies; `record_batch` is safe to call from any thread."""

    def __init__(self, track: Track, tallies: list[SideTally], plain_output: TextIO | None) -> None:
        self.track = track
        self.tallies = {tally.label: tally for tally in tallies}
        self.plain_output = plain_output  # None: a rich Live renders `__rich__` instead
        self.lock = threading.Lock()

    def record_batch(self, label: str, records: list[dict[str, Any]], elapsed_s: float) -> None:
        with self.lock:
            tally = self.tallies[label]
            tally.add_batch(records, elapsed_s)
            if self.plain_output is not None:
                self.plain_output.write(tally.line() + "\n")
                self.plain_output.flush()

    def __rich__(self) -> Table:
        with self.lock:
            table = Table(title=f"live compare: {self.track}", title_justify="left")
            table.add_column("side")
            table.add_column("rows", justify="right")
            for name in CORE_METRICS[self.track]:
                table.add_column(name.removesuffix("_rate"), justify="right")
            table.add_column("time", justify="right")
            table.add_column("misses", justify="right")
            table.add_column("latest mismatch", overflow="fold", max_width=80)
            for tally in self.tallies.values():
                table.add_row(
                    tally.label,
                    f"{tally.done}/{tally.total}",
                    *(f"{value:.3f}" for value in tally.core_rates().values()),
                    f"{tally.elapsed_s:.1f}s",
                    str(tally.mismatches),
                    tally.latest_mismatch.describe() if tally.latest_mismatch else "",
                )
            return table
