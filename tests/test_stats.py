"""Tests for edgeeval.scoring.stats: McNemar against hand values, bootstrap behaviour, Holm."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeeval.scoring.stats import bootstrap_ci, holm, mcnemar_exact, paired_bootstrap


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),  # 2 * P(X <= 0), n=1: 2 * 1/2 = 1
        (5, 0, 0.0625),  # 2 * (1/32)
        (0, 5, 0.0625),
        # n=12, k=2: 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12 = 2 * 79 / 4096 = 158/4096
        (10, 2, 0.03857421875),
        (2, 10, 0.03857421875),
        # n=10, k=1: 2 * (1 + 10) / 1024 = 22/1024
        (9, 1, 0.021484375),
        (3, 3, 1.0),
        # n=10, k=4: 2 * (1 + 10 + 45 + 120 + 210) / 1024 = 772/1024
        (6, 4, 0.75390625),
    ],
)
def test_mcnemar_exact_hand_values(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-15, abs=0)


def test_mcnemar_exact_matches_fraction_computation() -> None:
    for b, c in [(17, 4), (30, 12), (100, 70), (1, 20)]:
        n, k = b + c, min(b, c)
        exact = min(Fraction(1), 2 * Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n))
        assert mcnemar_exact(b, c) == float(exact)


def test_mcnemar_exact_matches_scipy_when_available() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(10, 2), (25, 11), (3, 9)]:
        reference = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(reference, rel=1e-12)


def test_mcnemar_exact_large_counts_do_not_overflow() -> None:
    assert mcnemar_exact(50_000, 50_000) == 1.0
    assert 0.0 <= mcnemar_exact(49_000, 51_000) < 1e-8
    near = mcnemar_exact(49_990, 50_010)
    assert 0.9 < near < 1.0


@pytest.mark.parametrize(("b", "c"), [(-1, 0), (0, -3), (1.5, 2)])
def test_mcnemar_exact_rejects_bad_counts(b: float, c: float) -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(b, c)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(b=st.integers(0, 300), c=st.integers(0, 300))
def test_mcnemar_exact_is_symmetric_and_a_probability(b: int, c: int) -> None:
    p = mcnemar_exact(b, c)
    assert 0.0 <= p <= 1.0
    assert p == mcnemar_exact(c, b)


def test_paired_bootstrap_constant_delta_has_zero_width() -> None:
    baseline = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=float)
    candidate = baseline + 1.0
    delta, low, high = paired_bootstrap(baseline, candidate, n_resamples=500)
    assert delta == low == high == 1.0


def test_paired_bootstrap_identical_models_give_zero() -> None:
    values = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    assert paired_bootstrap(values, values.copy(), n_resamples=200) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(7)
    base, cand = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    first = paired_bootstrap(base, cand, n_resamples=2_000, seed=3)
    assert paired_bootstrap(base, cand, n_resamples=2_000, seed=3) == first
    assert paired_bootstrap(base, cand, n_resamples=2_000, seed=4) != first


def test_paired_bootstrap_ci_contains_delta() -> None:
    rng = np.random.default_rng(11)
    base = rng.random(300) < 0.55
    cand = rng.random(300) < 0.65
    delta, low, high = paired_bootstrap(base, cand, n_resamples=3_000)
    assert low <= delta <= high
    assert delta == pytest.approx(cand.mean() - base.mean())


def test_paired_bootstrap_known_case() -> None:
    # Candidate fixes 1 of 2 items: per-item difference is 0 or 1, so the resampled delta is
    # (#resampled "fixed" items) / 2 in {0, 0.5, 1}; the 95% interval spans all of it.
    base = np.array([0.0, 0.0])
    cand = np.array([1.0, 0.0])
    assert paired_bootstrap(base, cand, n_resamples=4_000) == (0.5, 0.0, 1.0)


def test_paired_bootstrap_removes_shared_item_variation() -> None:
    # Pairing removes the shared item difficulty, so a consistent +1 gain has no spread.
    difficulty = np.linspace(0, 10, 100)
    _, low, high = paired_bootstrap(difficulty, difficulty + 1, n_resamples=1_000)
    assert high - low < 1e-9


def test_paired_bootstrap_chunking_matches_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeeval.scoring.stats as stats_module

    rng = np.random.default_rng(5)
    base, cand = rng.random(50), rng.random(50)
    monkeypatch.setattr(stats_module, "_BLOCK_ELEMENTS", 10**9)
    one_block = paired_bootstrap(base, cand, n_resamples=1_000)
    monkeypatch.setattr(stats_module, "_BLOCK_ELEMENTS", 50 * 7)
    # Different blocking draws the same stream of indices row by row, so results agree.
    assert paired_bootstrap(base, cand, n_resamples=1_000) == pytest.approx(one_block)


def test_paired_bootstrap_empty_and_mismatched() -> None:
    result = paired_bootstrap(np.array([]), np.array([]))
    assert all(math.isnan(x) for x in result)
    with pytest.raises(ValueError):
        paired_bootstrap(np.array([1.0, 0.0]), np.array([1.0]))


def test_paired_bootstrap_accepts_statistic_without_axis() -> None:
    base = np.arange(10.0)
    cand = base + 2
    delta, low, high = paired_bootstrap(
        base, cand, statistic=lambda x: float(np.median(x)), n_resamples=200
    )
    assert (delta, low, high) == (2.0, 2.0, 2.0)


def test_paired_bootstrap_median_statistic() -> None:
    base = np.arange(11.0)
    delta, low, high = paired_bootstrap(base, base * 2, statistic=np.median, n_resamples=500)
    assert delta == 5.0
    assert low <= delta <= high


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_bootstrap_rejects_bad_confidence(confidence: float) -> None:
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(3), confidence=confidence)


def test_bootstrap_ci_single_model() -> None:
    values = np.array([1] * 70 + [0] * 30, dtype=float)
    value, low, high = bootstrap_ci(values, n_resamples=5_000)
    assert value == 0.7
    assert low < 0.7 < high
    # Normal approximation: half-width about 1.96 * sqrt(0.21 / 100) = 0.09.
    assert 0.06 < high - value < 0.12 and 0.06 < value - low < 0.12
    assert bootstrap_ci(values, n_resamples=5_000) == (value, low, high)


def test_bootstrap_ci_constant_and_empty() -> None:
    assert bootstrap_ci(np.ones(20), n_resamples=100) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))


def test_wider_confidence_gives_wider_interval() -> None:
    rng = np.random.default_rng(2)
    values = rng.random(100)
    _, low90, high90 = bootstrap_ci(values, confidence=0.90, n_resamples=2_000)
    _, low99, high99 = bootstrap_ci(values, confidence=0.99, n_resamples=2_000)
    assert low99 <= low90 and high90 <= high99


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=60
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_bootstrap_delta_is_difference_of_means(pairs: list[tuple[int, int]], seed: int) -> None:
    base = np.array([p[0] for p in pairs], dtype=float)
    cand = np.array([p[1] for p in pairs], dtype=float)
    delta, low, high = paired_bootstrap(base, cand, n_resamples=200, seed=seed)
    assert delta == pytest.approx(cand.mean() - base.mean(), abs=1e-12)
    assert -1.0 <= low <= high <= 1.0


def test_holm_hand_example() -> None:
    # Sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06.
    result = holm([0.01, 0.04, 0.03, 0.005])
    assert result == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan() -> None:
    result = holm([0.5, float("nan"), 0.6])
    assert result[0] == 1.0 and result[2] == 1.0
    assert math.isnan(result[1])


def test_holm_nan_is_not_counted() -> None:
    assert holm([0.01, float("nan")])[0] == pytest.approx(0.01)


def test_holm_empty_and_single() -> None:
    assert holm([]) == []
    assert holm([0.2]) == [0.2]


def test_holm_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        holm([0.1, 1.2])


@settings(max_examples=200, deadline=None)
@given(
    p=st.lists(
        st.one_of(st.floats(0.0, 1.0), st.just(float("nan"))), min_size=0, max_size=30
    )
)
def test_holm_properties(p: list[float]) -> None:
    adjusted = holm(p)
    assert len(adjusted) == len(p)
    for raw, adj in zip(p, adjusted):
        if math.isnan(raw):
            assert math.isnan(adj)
        else:
            assert raw <= adj <= 1.0
    # Monotone: a smaller raw p-value never gets a larger adjusted one.
    valid = sorted((raw, adj) for raw, adj in zip(p, adjusted) if not math.isnan(raw))
    assert all(a[1] <= b[1] for a, b in zip(valid, valid[1:]))
