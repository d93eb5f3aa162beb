"""Paired statistics for teacher-vs-SLM hit vectors (pure, numpy only, deterministic).

Both models answer the same test rows, so their per-row hits are paired: the statistics below use
the pairing rather than treating the two rates as independent samples.

- `paired_bootstrap_deltas`: delta = rate(teacher) - rate(slm) on resamples of the rows, drawn with
  replacement (the same row indices for both models); `paired_bootstrap_interval` is its two-sided
  percentile interval and `one_sided_bounds` its one-sided bounds (the non-inferiority verdict reads these).
- `mcnemar_exact_p`: exact two-sided McNemar test on the discordant rows, binomial CDF computed
  exactly with integers (no scipy).
- `rows_to_decide`: a normal-approximation sample size for a paired non-inferiority test at a margin,
  planned from the observed discordant proportions.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import ceil, comb
from statistics import NormalDist

import numpy as np

# Index draws are made in chunks so a long split never holds resamples x rows indices at once.
MAX_INDICES_PER_CHUNK = 2_000_000


def _paired_arrays(teacher_hits: Sequence[bool], slm_hits: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    teacher = np.asarray(teacher_hits, dtype=bool)
    slm = np.asarray(slm_hits, dtype=bool)
    if teacher.ndim != 1 or slm.ndim != 1:
        raise ValueError("hit vectors must be flat sequences of booleans, one per row")
    if teacher.shape != slm.shape:
        raise ValueError(f"paired hit vectors differ in length: teacher {teacher.size} rows, slm {slm.size} rows")
    if teacher.size == 0:
        raise ValueError("paired hit vectors are empty: there are no rows to compare")
    return teacher, slm


def discordant_counts(teacher_hits: Sequence[bool], slm_hits: Sequence[bool]) -> tuple[int, int]:
    """(b, c): rows the teacher hits and the SLM misses, rows the SLM hits and the teacher misses."""
    teacher, slm = _paired_arrays(teacher_hits, slm_hits)
    return int(np.sum(teacher & ~slm)), int(np.sum(slm & ~teacher))


def paired_bootstrap_deltas(
    teacher_hits: Sequence[bool], slm_hits: Sequence[bool], resamples: int = 10_000, seed: int = 42
) -> np.ndarray:
    """rate(teacher) - rate(slm) on each of `resamples` bootstrap resamples of the paired rows.

    Each resample draws n row indices with replacement and applies them to both vectors; the same
    inputs and seed always give the same deltas, in the same order.
    """
    teacher, slm = _paired_arrays(teacher_hits, slm_hits)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    # Per-row difference in {-1, 0, 1}: a resample's delta is the mean of its rows' differences.
    row_delta = teacher.astype(np.int64) - slm.astype(np.int64)
    rows = row_delta.size
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_INDICES_PER_CHUNK // rows)
    deltas = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        indices = rng.integers(0, rows, size=(stop - start, rows))
        deltas[start:stop] = row_delta[indices].sum(axis=1) / rows
    return deltas


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def percentile_interval(deltas: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval (low, high) of bootstrap deltas: (1 - confidence) / 2 in each tail."""
    _check_confidence(confidence)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(low), float(high)


def one_sided_bounds(deltas: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(lower, upper): the one-sided `confidence` bounds of the bootstrap deltas, each with 1 - confidence
    in its one tail (at 0.95: the 5th and 95th percentiles, the ends of the two-sided 90% interval)."""
    _check_confidence(confidence)
    tail = round((1 - confidence) * 100, 9)  # 5.0, not 5.000000000000004
    lower, upper = np.percentile(deltas, [tail, 100 - tail])
    return float(lower), float(upper)


def paired_bootstrap_interval(
    teacher_hits: Sequence[bool],
    slm_hits: Sequence[bool],
    resamples: int = 10_000,
    seed: int = 42,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of rate(teacher) - rate(slm) over paired rows."""
    _check_confidence(confidence)
    return percentile_interval(paired_bootstrap_deltas(teacher_hits, slm_hits, resamples, seed), confidence)


def mcnemar_exact_p(teacher_hits: Sequence[bool], slm_hits: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value: min(1, 2 * P(X <= min(b, c))), X ~ Binomial(b + c, 1/2).

    b and c are the discordant counts (`discordant_counts`); p = 1.0 when there are none.
    """
    b, c = discordant_counts(teacher_hits, slm_hits)
    discordant = b + c
    if discordant == 0:
        return 1.0
    tail = Fraction(sum(comb(discordant, k) for k in range(min(b, c) + 1)), 2**discordant)
    return float(min(Fraction(1), 2 * tail))


def rows_to_decide(
    teacher_only: int, slm_only: int, rows: int, margin: float, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """About how many paired rows a one-sided test at level `alpha` with `power` needs to decide whether
    the SLM is worse than the teacher by more than `margin`, if the discordance stays as observed.

    Per row, D = teacher hit - slm hit is -1, 0 or 1. With p10 = teacher_only / rows and
    p01 = slm_only / rows, D has mean delta = p10 - p01 and variance s2 = p10 + p01 - delta**2.
    "Not worse" is the one-sided test of H0: delta >= margin against H1: delta < margin, which rejects
    when (margin - mean D) / sqrt(s2 / N) > z(1 - alpha). Its normal-approximation sample size for
    power 1 - beta at the observed delta is

        N = (z(1 - alpha) + z(1 - beta))**2 * s2 / (margin - delta)**2,  rounded up;

    at alpha 0.05 and power 0.8, (1.6449 + 0.8416)**2 = 6.1826. This is the one-sample z-test on the
    paired differences with their observed (unrestricted) variance; Nam (1997) and Liu et al. (2002)
    plan the same test with the variance restricted to the null and get somewhat different N.
    When delta > margin the same N is the rows that would show "worse" (H0: delta <= margin); no
    number of rows would show "not worse" then. None when no number of rows decides: delta equal to
    the margin, or no discordant row (s2 = 0: every resample's delta is 0, already decided at any N).
    """
    if rows < 1 or teacher_only < 0 or slm_only < 0 or teacher_only + slm_only > rows:
        raise ValueError(f"need 0 <= teacher_only + slm_only <= rows, got {teacher_only}, {slm_only}, {rows}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be between 0 and 1 (exclusive), got {alpha}, {power}")
    delta = (teacher_only - slm_only) / rows  # from counts: (3 - 1) / 100 is 0.02, 3/100 - 1/100 is not
    variance = (teacher_only + slm_only) / rows - delta**2
    if variance == 0 or delta == margin:
        return None
    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return ceil(z**2 * variance / (margin - delta) ** 2)
