"""Paired bootstrap interval and exact McNemar test against hand-computed values."""

from __future__ import annotations

import pytest

from ray_app.decide.paired_statistics import discordant_counts, mcnemar_exact_p, paired_bootstrap_interval


def hits(text: str) -> list[bool]:
    """'1101' → [True, True, False, True]."""
    return [char == "1" for char in text]


@pytest.mark.parametrize(
    ("teacher", "slm", "b", "c", "p"),
    [
        ("0000000000", "1111100000", 0, 5, 0.0625),  # 2 * 1/32
        ("1111100000", "0000000000", 5, 0, 0.0625),  # symmetric
        ("1000000000", "0111111111", 1, 9, 0.021484375),  # 2 * (1 + 10) / 1024
        ("1100", "0011", 2, 2, 1.0),  # 2 * (1 + 4 + 6) / 16 = 1.375, capped at 1
        ("10", "00", 1, 0, 1.0),  # 2 * 1/2
        ("1101", "1101", 0, 0, 1.0),  # no discordant rows
        ("111000", "110100", 1, 1, 1.0),  # concordant rows do not count
    ],
)
def test_mcnemar_exact_p_hand_computed(teacher: str, slm: str, b: int, c: int, p: float) -> None:
    assert discordant_counts(hits(teacher), hits(slm)) == (b, c)
    assert mcnemar_exact_p(hits(teacher), hits(slm)) == p


def test_mcnemar_large_counts_stay_exact() -> None:
    # b=0, c=60: p = 2 / 2**60, far below float rounding of any sum-of-floats approach.
    assert mcnemar_exact_p([False] * 60, [True] * 60) == 2 / 2**60


def test_identical_vectors_give_zero_interval_and_p_one() -> None:
    teacher = hits("1101100111")
    assert paired_bootstrap_interval(teacher, teacher) == (0.0, 0.0)
    assert mcnemar_exact_p(teacher, teacher) == 1.0


def test_interval_is_deterministic_and_depends_on_the_seed() -> None:
    teacher, slm = hits("1111111111" * 3), hits("1111100110" * 3)
    first = paired_bootstrap_interval(teacher, slm, resamples=2000, seed=42)
    assert first == paired_bootstrap_interval(teacher, slm, resamples=2000, seed=42)
    # Few resamples, so the percentiles fall between the discrete deltas and show the seed.
    assert paired_bootstrap_interval(teacher, slm, resamples=20, seed=42) != paired_bootstrap_interval(
        teacher, slm, resamples=20, seed=7
    )


def test_interval_hand_checked_quantiles() -> None:
    # One discordant row (teacher hit, slm miss) out of 10: a resample's delta is k/10 with
    # k ~ Binomial(10, 0.1). P(k=0) = 0.349 > 2.5%, P(k<=3) = 0.987 > 97.5% > P(k<=2) = 0.930:
    # the interval is (0.0, 0.3) and contains the observed delta 0.1.
    low, high = paired_bootstrap_interval(hits("1111111111"), hits("1111111110"))
    assert (low, high) == (0.0, 0.3)


def test_interval_is_paired_not_independent() -> None:
    # The SLM misses exactly the rows the teacher misses, plus none: every resample has delta 0.
    # Independent resampling of the two vectors would give a wide interval instead.
    teacher = hits("1010101010")
    assert paired_bootstrap_interval(teacher, list(teacher)) == (0.0, 0.0)


def test_interval_sign_follows_teacher_minus_slm() -> None:
    low, high = paired_bootstrap_interval(hits("0000000000" * 2), hits("1111111111" * 2))
    assert (low, high) == (-1.0, -1.0)  # every row: teacher miss, slm hit


def test_chunked_draws_cover_every_resample(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray_app.decide.paired_statistics as module

    teacher, slm = hits("1111111111"), hits("1111100000")
    whole = paired_bootstrap_interval(teacher, slm, resamples=501)
    monkeypatch.setattr(module, "MAX_INDICES_PER_CHUNK", 30)  # 3 resamples per chunk, last chunk partial
    chunked = paired_bootstrap_interval(teacher, slm, resamples=501)
    assert chunked == whole  # sequential chunks draw the same index stream


@pytest.mark.parametrize(
    ("teacher", "slm", "kwargs", "message"),
    [
        ([True], [True, False], {}, "differ in length: teacher 1 rows, slm 2 rows"),
        ([], [], {}, "no rows"),
        ([True], [True], {"resamples": 0}, "resamples must be at least 1"),
        ([True], [True], {"confidence": 1.0}, "confidence must be between 0 and 1"),
    ],
)
def test_bad_input_is_refused(teacher: list, slm: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_interval(teacher, slm, **kwargs)
