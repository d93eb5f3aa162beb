"""Paired statistics for teacher-vs-SLM hit vectors (pure, numpy only, deterministic).

Both models answer the same test rows, so their per-row hits are paired: the statistics below use
the pairing rather than treating the two rates as independent samples.

- `paired_bootstrap_interval`: percentile interval of delta = rate(teacher) - rate(slm), resampling
  row indices with replacement (the same indices for both models).
- `mcnemar_exact_p`: exact two-sided McNemar test on the discordant rows, binomial CDF computed
  exactly with integers (no scipy).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import comb

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


def paired_bootstrap_interval(
    teacher_hits: Sequence[bool],
    slm_hits: Sequence[bool],
    resamples: int = 10_000,
    seed: int = 42,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of rate(teacher) - rate(slm) over paired rows.

    Each resample draws n row indices with replacement and applies them to both vectors; the same
    inputs and seed always give the same interval.
    """
    teacher, slm = _paired_arrays(teacher_hits, slm_hits)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
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
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(low), float(high)


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
