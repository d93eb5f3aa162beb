"""The parity verdict: is a candidate SLM worse than the teacher by more than a margin? (non-inferiority)

Beside the seed's rule (FINE_TUNE = 1 when the SLM is below the teacher on any core metric, however
little), each core metric of each candidate gets one of three verdicts at a margin M (default 0.02,
2 points), read from the one-sided 95% bounds of delta = teacher rate - candidate rate over the paired
bootstrap resamples of the rows (`paired_statistics`, seed 42):
- "not worse": the upper bound of delta is below M (the candidate is, with 95% confidence, at most M
  below the teacher; equivalently the lower bound of candidate - teacher is above -M);
- "worse": the lower bound of delta is above M (below the teacher by more than M, with 95% confidence);
- "cannot tell": neither, with about how many rows would decide (`paired_statistics.rows_to_decide`,
  planned from the observed discordant rows at one-sided alpha 0.05 and power 0.8).
Overall: not worse when every core metric is, worse when any is, otherwise cannot tell with the most
rows any undecided metric needs. The records (`Parity` and its parts) are what decision.json holds
under a comparison with the teacher (`decision_record.ModelComparison.parity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_app.decide.paired_statistics import one_sided_bounds, rows_to_decide
from ray_app.record_fields import RecordFields

DEFAULT_MARGIN = 0.02  # 2 points of a rate
CONFIDENCE = 0.95  # one-sided
PARITY_VERDICTS = ("not worse", "worse", "cannot tell")
BOUND_NOTE = "(95% one-sided paired bootstrap bound)"


def verdict_field(fields: RecordFields) -> str:
    verdict = fields.text("verdict")
    if verdict not in PARITY_VERDICTS:
        raise fields.error("verdict", "one of " + ", ".join(map(repr, PARITY_VERDICTS)))
    return verdict


def rows_needed_field(fields: RecordFields) -> int | None:
    return None if fields.raw("rows_needed") is None else fields.integer("rows_needed")


@dataclass(frozen=True)
class MetricParity:
    """One core metric's non-inferiority verdict: is the candidate worse than the reference by more than the margin?"""

    delta_lower_95: float  # one-sided 95% lower bound of delta (reference - candidate): "worse" when > margin
    delta_upper_95: float  # one-sided 95% upper bound of delta: "not worse" when < margin
    verdict: str  # one of PARITY_VERDICTS
    rows_needed: int | None  # "cannot tell": about how many rows would decide (None: no number would)
    words: str  # the verdict in plain words

    @classmethod
    def from_fields(cls, fields: RecordFields) -> MetricParity:
        return cls(
            delta_lower_95=fields.number("delta_lower_95"),
            delta_upper_95=fields.number("delta_upper_95"),
            verdict=verdict_field(fields),
            rows_needed=rows_needed_field(fields),
            words=fields.text("words"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "delta_lower_95": self.delta_lower_95,
            "delta_upper_95": self.delta_upper_95,
            "verdict": self.verdict,
            "rows_needed": self.rows_needed,
            "words": self.words,
        }


@dataclass(frozen=True)
class OverallParity:
    """Every core metric together: not worse when each is, worse when any is, else cannot tell."""

    verdict: str  # one of PARITY_VERDICTS
    rows_needed: int | None  # "cannot tell": the most rows any undecided metric needs (None: no number would)
    words: str

    @classmethod
    def from_fields(cls, fields: RecordFields) -> OverallParity:
        return cls(verdict_field(fields), rows_needed_field(fields), fields.text("words"))

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "rows_needed": self.rows_needed, "words": self.words}


@dataclass(frozen=True)
class Parity:
    """The non-inferiority verdicts of a candidate against the teacher at one margin."""

    margin: float  # in rate units: 0.02 is 2 points
    core: dict[str, MetricParity]
    overall: OverallParity

    @classmethod
    def from_fields(cls, fields: RecordFields) -> Parity:
        return cls(
            margin=fields.number("margin"),
            core={name: MetricParity.from_fields(metric) for name, metric in fields.objects("core").items()},
            overall=OverallParity.from_fields(fields.object("overall")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "core": {name: metric.to_json() for name, metric in self.core.items()},
            "overall": self.overall.to_json(),
        }


# ---- pure logic: bounds → verdicts → words ----


def check_margin(margin: float) -> None:
    """A margin is a difference of rates, above 0 and below 1 (0.02 is 2 points); ValueError otherwise."""
    if not 0 < margin < 1:
        raise ValueError(
            f"the parity margin is a difference of rates, above 0 and below 1 (0.02 is 2 points), got {margin}"
        )


def points(value: float) -> str:
    """A difference of rates in points: 0.02 → '2 points', 0.01 → '1 point', 0.025 → '2.5 points'."""
    shown = f"{round(value * 100, 2):g}"
    return f"{shown} point" + ("" if shown in ("1", "-1") else "s")


def parity_verdict(delta_lower: float, delta_upper: float, margin: float) -> str:
    """not worse when the upper bound of delta (teacher - candidate) is below the margin, worse when the
    lower bound is above it, else cannot tell."""
    if delta_upper < margin:
        return "not worse"
    if delta_lower > margin:
        return "worse"
    return "cannot tell"


def metric_words(verdict: str, margin: float, rows: int, rows_needed: int | None, delta: float) -> str:
    if verdict == "not worse":
        return f"not worse than the teacher by more than {points(margin)} {BOUND_NOTE}"
    if verdict == "worse":
        return f"worse than the teacher by more than {points(margin)} {BOUND_NOTE}"
    told = f"cannot tell with {rows:,} rows — "
    if rows_needed is None:
        return (
            told + f"no number of rows would decide at this margin (the observed gap, {points(delta)}, is the margin)"
        )
    words = told + f"about {rows_needed:,} rows would decide at this margin"
    if delta > margin:
        beyond = 'more rows would show "worse", none "not worse"'
        words += f" (the observed gap, {points(delta)}, is beyond the margin: {beyond})"
    return words


def metric_parity(deltas: np.ndarray, teacher_only: int, candidate_only: int, rows: int, margin: float) -> MetricParity:
    """One core metric's verdict from the bootstrap deltas (teacher - candidate) and the discordant counts.

    The bounds are rounded to 6 decimals, as decision.json holds them, before the verdict reads them,
    so the file always agrees with itself. The rows needed of a "cannot tell" exceed the rows at hand:
    at 80% power the estimate is about 2.3 times the rows at which the observed bound would reach the
    margin ((1.645 + 0.842)**2 / 1.645**2), so it can only fall short where the bootstrap bound is far
    wider than the normal one (not seen on any n < 25 at margins 0.01-0.5).
    """
    check_margin(margin)
    lower, upper = (round(bound, 6) for bound in one_sided_bounds(deltas, CONFIDENCE))
    verdict = parity_verdict(lower, upper, margin)
    needed = None
    if verdict == "cannot tell":
        needed = rows_to_decide(teacher_only, candidate_only, rows, margin, alpha=1 - CONFIDENCE, power=0.8)
    delta = (teacher_only - candidate_only) / rows
    return MetricParity(lower, upper, verdict, needed, metric_words(verdict, margin, rows, needed, delta))


def overall_parity(core: Mapping[str, MetricParity], rows: int, margin: float) -> OverallParity:
    """Worse when any core metric is worse; not worse when every one is; else cannot tell, with the most
    rows any undecided metric needs (None when one of them cannot be decided by any number of rows)."""
    if not core:
        raise ValueError("no core metric to give a parity verdict on")
    worse = [metric for metric, parity in core.items() if parity.verdict == "worse"]
    if worse:
        return OverallParity(
            "worse", None, f"worse than the teacher by more than {points(margin)} on {', '.join(worse)} {BOUND_NOTE}"
        )
    undecided = [metric for metric, parity in core.items() if parity.verdict == "cannot tell"]
    if not undecided:
        return OverallParity(
            "not worse",
            None,
            f"not worse than the teacher by more than {points(margin)} on every core metric {BOUND_NOTE}",
        )
    needs = [core[metric].rows_needed for metric in undecided]
    needed = None if None in needs else max(need for need in needs if need is not None)
    told = f"cannot tell with {rows:,} rows — "
    decides = "no number of rows would decide" if needed is None else f"about {needed:,} rows would decide"
    return OverallParity("cannot tell", needed, f"{told}{decides} at this margin (undecided: {', '.join(undecided)})")


def parity(core: Mapping[str, MetricParity], rows: int, margin: float) -> Parity:
    return Parity(margin, dict(core), overall_parity(core, rows, margin))


def parity_metadata(verdicts: dict[str, Parity]) -> dict[str, Any]:
    """The parity verdicts as a decision event's metadata: per candidate, the overall and each metric's verdict."""
    return {
        label: {
            "margin": found.margin,
            "overall": found.overall.verdict,
            "overall_words": found.overall.words,
            "rows_needed": found.overall.rows_needed,
            **{metric: verdict.verdict for metric, verdict in found.core.items()},
        }
        for label, found in verdicts.items()
    }
