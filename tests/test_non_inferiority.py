"""The parity verdict (non-inferiority at a margin) against numbers worked out by hand.

Notation: delta = teacher rate - SLM rate over paired rows (> 0: the SLM is worse); b = rows only the
teacher hits, c = rows only the SLM hits, n = rows. Margin M = 0.02 unless a test says otherwise.
Rows needed: N = (z95 + z80)^2 * s2 / (M - delta)^2 rounded up, s2 = (b + c) / n - delta^2, and
(z95 + z80)^2 = (1.644854 + 0.841621)^2 = 6.182557.
"""

from __future__ import annotations

import json
from math import factorial
from pathlib import Path

import pytest

from ray_app.decide.decide import decide_fine_tune
from ray_app.decide.decision_record import ModelComparison
from ray_app.decide.non_inferiority import (
    MetricParity,
    OverallParity,
    Parity,
    check_margin,
    metric_parity,
    metric_words,
    overall_parity,
    parity_verdict,
    points,
)
from ray_app.decide.paired_statistics import one_sided_bounds, paired_bootstrap_deltas, rows_to_decide
from ray_app.pipeline.config import PipelineConfigError, build_config
from ray_app.record_fields import RecordError, RecordFields

BOUND = "(95% one-sided paired bootstrap bound)"


def paired(b: int, c: int, same: int) -> tuple[list[bool], list[bool]]:
    """b rows only the teacher hits, c only the SLM hits, then `same` rows both hit."""
    teacher = [True] * b + [False] * c + [True] * same
    slm = [False] * b + [True] * c + [True] * same
    return teacher, slm


def exact_bootstrap_quantiles(b: int, c: int, n: int) -> tuple[float, float]:
    """The 5th and 95th percentiles of delta under the exact bootstrap distribution (infinitely many
    resamples): a resample's delta is (X - Y) / n with (X, Y, rest) ~ Multinomial(n, b/n, c/n, rest)."""
    probability: dict[int, float] = {}
    p, q = b / n, c / n
    for x in range(n + 1):
        for y in range(n + 1 - x):
            ways = factorial(n) // (factorial(x) * factorial(y) * factorial(n - x - y))
            probability[x - y] = probability.get(x - y, 0.0) + ways * p**x * q**y * (1 - p - q) ** (n - x - y)
    cumulative, lower, upper = 0.0, None, None
    for value in sorted(probability):
        cumulative += probability[value]
        if lower is None and cumulative >= 0.05:
            lower = value / n
        if upper is None and cumulative >= 0.95:
            upper = value / n
    return lower, upper  # type: ignore[return-value]


# ---- the bound ----


@pytest.mark.parametrize(
    ("b", "c", "n", "bounds"),
    [
        # b=1 of 10: X ~ Bin(10, 0.1); P(X=0) = 0.349 > 5%; P(X<=2) = 0.930 < 95% <= P(X<=3) = 0.987.
        (1, 0, 10, (0.0, 0.3)),
        # c=1 of 10: delta = -Y/10; P(Y>=3) = 0.070 > 5% > P(Y>=4) = 0.013, and delta never goes above 0.
        (0, 1, 10, (-0.3, 0.0)),
        # b=2, c=1 of 10 (X - Y): P(S<=-3) = 0.018 < 5% <= P(S<=-2) = 0.067; P(S<=3) = 0.931 < 95% <= P(S<=4) = 0.981.
        (2, 1, 10, (-0.2, 0.4)),
        # b=c=1 of 10: P(S<=-3) = 0.036, P(S<=-2) = 0.135; P(S<=1) = 0.865, P(S<=2) = 0.964.
        (1, 1, 10, (-0.2, 0.2)),
    ],
)
def test_one_sided_bounds_are_the_exact_bootstrap_quantiles(b: int, c: int, n: int, bounds: tuple) -> None:
    teacher, slm = paired(b, c, n - b - c)
    assert exact_bootstrap_quantiles(b, c, n) == bounds  # the hand numbers above, recomputed exactly
    # 10,000 seeded resamples land on the same values: no CDF step above sits within 1.5 points of 5% or 95%.
    assert one_sided_bounds(paired_bootstrap_deltas(teacher, slm, 10_000, 42)) == bounds


def test_bound_agrees_with_the_normal_approximation_on_400_rows() -> None:
    # b=4, c=8 of 400: delta = -0.01, s2 = 0.03 - 0.0001 = 0.0299, se = sqrt(0.0299 / 400) = 0.008646.
    # Normal one-sided 95% bounds: -0.01 -/+ 1.644854 * 0.008646 = -0.024221 and +0.004221.
    # The bootstrap moves in steps of 1/400 = 0.0025; allow one step.
    teacher, slm = paired(4, 8, 388)
    lower, upper = one_sided_bounds(paired_bootstrap_deltas(teacher, slm, 10_000, 42))
    assert abs(lower - -0.024221) <= 0.0025 and abs(upper - 0.004221) <= 0.0025
    verdict = metric_parity(paired_bootstrap_deltas(teacher, slm, 10_000, 42), 4, 8, 400, 0.02)
    assert verdict.verdict == "not worse" and verdict.rows_needed is None


def test_bootstrap_is_deterministic_and_paired() -> None:
    teacher, slm = paired(6, 3, 91)
    first = paired_bootstrap_deltas(teacher, slm, 2_000, 42)
    assert (first == paired_bootstrap_deltas(teacher, slm, 2_000, 42)).all()
    # Paired: the same rows for both models, so with no discordant row every resample's delta is 0
    # (independent resampling of two 0.5 rates would spread over about +-0.14).
    half = [True, False] * 50
    assert set(paired_bootstrap_deltas(half, list(half), 2_000, 42)) == {0.0}


# ---- rows needed ----


@pytest.mark.parametrize(
    ("b", "c", "n", "needed"),
    [
        (2, 1, 100, 1849),  # delta 0.01, s2 0.0299: 6.182557 * 0.0299 / 0.0001 = 1848.6 → 1849
        (1, 3, 200, 137),  # delta -0.01, s2 0.0199: 6.182557 * 0.0199 / 0.0009 = 136.7 → 137
        (1, 0, 10, 87),  # delta 0.1 (beyond M: rows to show "worse"), s2 0.09: 6.182557 * 0.09 / 0.0064 = 86.9 → 87
        (5, 2, 100, 4273),  # delta 0.03, s2 0.0691: 6.182557 * 0.0691 / 0.0001 = 4272.1 → 4273
        (1, 1, 10, 3092),  # delta 0, s2 0.2: 6.182557 * 0.2 / 0.0004 = 3091.3 → 3092
        (3, 1, 100, None),  # delta 0.02 = M: no number of rows decides either way
        (0, 0, 50, None),  # no discordant row: s2 = 0, nothing to plan from (the bound is already 0)
    ],
)
def test_rows_to_decide_hand_computed(b: int, c: int, n: int, needed: int | None) -> None:
    assert rows_to_decide(b, c, n, 0.02) == needed


def test_rows_to_decide_shrinks_with_a_wider_margin_and_refuses_bad_counts() -> None:
    # b=2, c=1 of 100 at M = 0.05: 6.182557 * 0.0299 / 0.0016 = 115.5 → 116.
    assert rows_to_decide(2, 1, 100, 0.05) == 116
    with pytest.raises(ValueError, match="teacher_only \\+ slm_only <= rows"):
        rows_to_decide(8, 5, 10, 0.02)


# ---- verdicts and words ----


@pytest.mark.parametrize(
    ("lower", "upper", "verdict"),
    [
        (-0.05, 0.019, "not worse"),
        (0.021, 0.1, "worse"),
        (-0.01, 0.02, "cannot tell"),  # an upper bound at the margin is not below it
        (0.02, 0.05, "cannot tell"),  # a lower bound at the margin is not above it
    ],
)
def test_parity_verdict_thresholds(lower: float, upper: float, verdict: str) -> None:
    assert parity_verdict(lower, upper, 0.02) == verdict


def test_the_three_verdicts_in_words() -> None:
    assert metric_words("not worse", 0.02, 400, None, -0.01) == (
        f"not worse than the teacher by more than 2 points {BOUND}"
    )
    assert metric_words("worse", 0.02, 200, None, 0.1) == f"worse than the teacher by more than 2 points {BOUND}"
    assert metric_words("cannot tell", 0.02, 100, 1849, 0.01) == (
        "cannot tell with 100 rows — about 1,849 rows would decide at this margin"
    )
    assert metric_words("cannot tell", 0.02, 10, 87, 0.1) == (
        "cannot tell with 10 rows — about 87 rows would decide at this margin (the observed gap, 10 points, is "
        'beyond the margin: more rows would show "worse", none "not worse")'
    )
    assert metric_words("cannot tell", 0.02, 100, None, 0.02) == (
        "cannot tell with 100 rows — no number of rows would decide at this margin (the observed gap, 2 points, "
        "is the margin)"
    )
    assert [points(value) for value in (0.02, 0.01, 0.025, 0.1)] == ["2 points", "1 point", "2.5 points", "10 points"]


def test_metric_parity_from_a_dataset() -> None:
    # b=1 of 10: bounds (0.0, 0.3) as above, cannot tell; 87 rows (hand-computed above).
    teacher, slm = paired(1, 0, 9)
    found = metric_parity(paired_bootstrap_deltas(teacher, slm), 1, 0, 10, 0.02)
    assert (found.delta_lower_95, found.delta_upper_95, found.verdict, found.rows_needed) == (
        0.0,
        0.3,
        "cannot tell",
        87,
    )
    # No discordant row: every resample's delta is 0 < M, so "not worse" (the percentile bootstrap cannot
    # imagine a discordance it never saw: read this verdict with its row count).
    same = [True] * 7 + [False] * 3
    found = metric_parity(paired_bootstrap_deltas(same, list(same)), 0, 0, 10, 0.02)
    assert (found.delta_lower_95, found.delta_upper_95, found.verdict, found.rows_needed) == (
        0.0,
        0.0,
        "not worse",
        None,
    )
    # Every row lost: every resample's delta is 1 > M.
    teacher, slm = paired(10, 0, 0)
    assert metric_parity(paired_bootstrap_deltas(teacher, slm), 10, 0, 10, 0.02).verdict == "worse"


def test_parity_sits_beside_the_rule_and_never_changes_it() -> None:
    # b=5, c=4 of 400: delta = +0.0025 > 0, so the seed's rule says FINE_TUNE = 1 ...
    assert decide_fine_tune({"exact_match_rate": (5 - 4) / 400})[0] == 1
    # ... while se = sqrt((9/400 - 0.0025^2) / 400) = 0.0075 puts the upper bound near
    # 0.0025 + 1.644854 * 0.0075 = 0.0148 < 0.02: not worse by more than 2 points.
    teacher, slm = paired(5, 4, 391)
    found = metric_parity(paired_bootstrap_deltas(teacher, slm), 5, 4, 400, 0.02)
    assert found.verdict == "not worse" and abs(found.delta_upper_95 - 0.0148) <= 0.0025


# ---- overall ----


def verdict(name: str, rows_needed: int | None = None) -> MetricParity:
    return MetricParity(0.0, 0.0, name, rows_needed, name)


def test_overall_verdict() -> None:
    both = {"json_valid_rate": verdict("not worse"), "exact_match_rate": verdict("not worse")}
    assert overall_parity(both, 50, 0.02) == OverallParity(
        "not worse", None, f"not worse than the teacher by more than 2 points on every core metric {BOUND}"
    )
    mixed = {"valid_call_rate": verdict("cannot tell", 900), "name_match_rate": verdict("worse"),
             "args_exact_rate": verdict("not worse")}  # fmt: skip
    assert overall_parity(mixed, 50, 0.02) == OverallParity(
        "worse", None, f"worse than the teacher by more than 2 points on name_match_rate {BOUND}"
    )
    undecided = {"json_valid_rate": verdict("cannot tell", 3092), "exact_match_rate": verdict("cannot tell", 281),
                 "other_rate": verdict("not worse")}  # fmt: skip
    assert overall_parity(undecided, 10, 0.02) == OverallParity(
        "cannot tell",
        3092,  # the most rows any undecided metric needs
        "cannot tell with 10 rows — about 3,092 rows would decide at this margin "
        "(undecided: json_valid_rate, exact_match_rate)",
    )
    stuck = {"json_valid_rate": verdict("cannot tell", 3092), "exact_match_rate": verdict("cannot tell", None)}
    assert overall_parity(stuck, 100, 0.02) == OverallParity(
        "cannot tell",
        None,
        "cannot tell with 100 rows — no number of rows would decide at this margin "
        "(undecided: json_valid_rate, exact_match_rate)",
    )


# ---- the record and the margin ----


def test_a_comparison_with_parity_reads_back_the_same_json(tmp_path: Path) -> None:
    teacher, slm = paired(2, 1, 7)
    deltas = paired_bootstrap_deltas(teacher, slm)
    core = {"exact_match_rate": metric_parity(deltas, 2, 1, 10, 0.02)}
    record = Parity(0.02, core, overall_parity(core, 10, 0.02))
    written = {"reference": "teacher", "candidate": "slm", "core": {}, "info": {}, "parity": record.to_json()}
    assert written["parity"] == {
        "margin": 0.02,
        "core": {
            "exact_match_rate": {
                "delta_lower_95": -0.2,
                "delta_upper_95": 0.4,
                "verdict": "cannot tell",
                "rows_needed": 281,  # delta 0.1, s2 0.29: 6.182557 * 0.29 / 0.0064 = 280.2 → 281
                "words": "cannot tell with 10 rows — about 281 rows would decide at this margin (the observed "
                'gap, 10 points, is beyond the margin: more rows would show "worse", none "not worse")',
            }
        },
        "overall": {
            "verdict": "cannot tell",
            "rows_needed": 281,
            "words": "cannot tell with 10 rows — about 281 rows would decide at this margin "
            "(undecided: exact_match_rate)",
        },
    }
    text = json.dumps(written)
    comparison = ModelComparison.from_fields(RecordFields(json.loads(text), "decision.json"), ())
    assert comparison.parity == record and json.dumps(comparison.to_json()) == text
    # A file written before parity verdicts existed reads as None and writes back without the key.
    older = {key: value for key, value in written.items() if key != "parity"}
    assert ModelComparison.from_fields(RecordFields(older, "decision.json"), ()).to_json() == older
    written["parity"]["core"]["exact_match_rate"]["verdict"] = "similar"
    with pytest.raises(RecordError, match="field 'parity.core.exact_match_rate.verdict' must be one of 'not worse'"):
        ModelComparison.from_fields(RecordFields(written, "decision.json"), ())


@pytest.mark.parametrize("margin", [0.0, -0.02, 1.0, 2.0])
def test_a_margin_outside_0_to_1_is_refused_naming_the_unit(margin: float) -> None:
    with pytest.raises(ValueError, match=r"above 0 and below 1 \(0\.02 is 2 points\)"):
        check_margin(margin)


def test_the_main_job_refuses_a_margin_in_points_before_any_compute(tmp_path: Path) -> None:
    assert build_config(None, {"parity_margin": "0.05"}).parity_margin == 0.05
    assert build_config(None, {}).parity_margin == 0.02
    with pytest.raises(PipelineConfigError, match=r"\(0\.02 is 2 points\), got 2\.0"):
        build_config(None, {"parity_margin": "2"})
    settings = tmp_path / "pipeline.yaml"
    settings.write_text("parity_margin: 1.5\n", encoding="utf-8")
    with pytest.raises(PipelineConfigError, match=r"got 1\.5"):
        build_config(settings, {})
