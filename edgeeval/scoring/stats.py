"""Paired statistics: exact McNemar, paired bootstrap CIs, a paired permutation test, Holm correction."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Statistic = Callable[..., Any]

# Upper bound on the size of one (resamples x items) block, so 10^4 x 10^4 resampling stays
# within a few tens of MB instead of allocating the full matrix at once.
_BLOCK_ELEMENTS = 2_000_000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c."""
    b, c = _count(b, "b"), _count(c, "c")
    n, k = b + c, min(b, c)
    if n == 0 or 2 * k >= n:
        # The smaller tail already holds at least half the mass, so 2 * P >= 1.
        return 1.0
    # Exact integers: the tail sum and 2^n are big ints, and int / int division is
    # correctly rounded, so nothing overflows or loses precision for large n.
    tail, term = 0, 1
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, (2 * tail) / (1 << n))


def chi_square(table: np.ndarray) -> float:
    """Pearson's chi-square statistic of a contingency table (rows x columns of counts); columns with no count
    at all are left out, and a table with fewer than two columns left is 0."""
    table = np.asarray(table, dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table.sum() == 0:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def homogeneity_test(first: Sequence[int], second: Sequence[int], n_categories: int,
                     n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """(chi-square, p): do two samples of category codes (0 .. n_categories-1) come from one distribution? The
    statistic is Pearson's chi-square of their 2 x K table of counts; p is the share of `n_resamples` seeded
    random splits of the pooled codes into samples of the same sizes with a statistic at least as large (a
    permutation test, valid at any count, where the chi-square distribution is not: a few dozen answers over
    five letters), with the observed split counted (so p is never 0)."""
    a, b = np.asarray(first, dtype=np.intp), np.asarray(second, dtype=np.intp)
    if a.size == 0 or b.size == 0:
        return (math.nan, math.nan)
    observed = chi_square(np.stack([np.bincount(a, minlength=n_categories), np.bincount(b, minlength=n_categories)]))
    pooled = np.concatenate([a, b])
    totals = np.bincount(pooled, minlength=n_categories)
    rng = np.random.default_rng(seed)
    at_least, done = 0, 0
    block = max(1, _BLOCK_ELEMENTS // max(1, a.size * n_categories))
    while done < n_resamples:
        rows = min(block, n_resamples - done)
        shuffled = rng.permuted(np.broadcast_to(pooled, (rows, pooled.size)), axis=1)
        counts = (shuffled[:, : a.size, None] == np.arange(n_categories)).sum(axis=1)  # rows x K: the first sample
        at_least += int((_split_chi_square(counts, totals, a.size) >= observed - 1e-9).sum())
        done += rows
    return (observed, (at_least + 1) / (n_resamples + 1))


def _split_chi_square(first: np.ndarray, totals: np.ndarray, n_first: int) -> np.ndarray:
    """chi_square of [first; totals - first] for every row of `first` at once (the margins are the same for all)."""
    used = totals > 0
    if used.sum() < 2:
        return np.zeros(first.shape[0])
    first, totals = first[:, used].astype(float), totals[used].astype(float)
    n = totals.sum()
    expected_first, expected_second = n_first * totals / n, (n - n_first) * totals / n
    return (((first - expected_first) ** 2 / expected_first).sum(axis=1)
            + (((totals - first) - expected_second) ** 2 / expected_second).sum(axis=1))


def paired_bootstrap(
    baseline: np.ndarray,
    candidate: np.ndarray,
    statistic: Statistic = np.mean,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(delta, ci_low, ci_high) of statistic(candidate) - statistic(baseline), paired by item."""
    base, cand = _as_1d(baseline, "baseline"), _as_1d(candidate, "candidate")
    if base.shape != cand.shape:
        raise ValueError(f"paired arrays differ in length: {base.size} vs {cand.size}")
    _check_settings(n_resamples, confidence)
    if base.size == 0:
        return (math.nan, math.nan, math.nan)
    delta = float(statistic(cand)) - float(statistic(base))

    def resampled(idx: np.ndarray) -> np.ndarray:
        # The same indices for both models: that is what makes the interval paired.
        return _apply(statistic, cand[idx]) - _apply(statistic, base[idx])

    low, high = _percentile_interval(resampled, base.size, n_resamples, seed, confidence)
    return (delta, low, high)


def bootstrap_ci(
    values: np.ndarray,
    statistic: Statistic = np.mean,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of statistic(values) with a percentile bootstrap interval."""
    data = _as_1d(values, "values")
    _check_settings(n_resamples, confidence)
    if data.size == 0:
        return (math.nan, math.nan, math.nan)
    value = float(statistic(data))
    low, high = _percentile_interval(
        lambda idx: _apply(statistic, data[idx]), data.size, n_resamples, seed, confidence
    )
    return (value, low, high)


def paired_permutation(
    baseline: np.ndarray,
    candidate: np.ndarray,
    statistic: Statistic = np.mean,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided p-value of statistic(candidate) - statistic(baseline) under the null that the two
    models are exchangeable within each pair: every resample swaps each pair's values with probability
    1/2 (a sign-flip test for a mean). The observed split counts as one resample, so p > 0."""
    base, cand = _as_1d(baseline, "baseline"), _as_1d(candidate, "candidate")
    if base.shape != cand.shape:
        raise ValueError(f"paired arrays differ in length: {base.size} vs {cand.size}")
    _check_settings(n_resamples, 0.5)
    if base.size == 0:
        return math.nan
    observed = abs(float(statistic(cand)) - float(statistic(base)))
    # A resample ties the observed difference up to rounding; without the tolerance a swap that
    # changes nothing could count as less extreme through float noise.
    threshold = observed - 1e-12 * max(1.0, observed)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // base.size)
    extreme = 0
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        swap = rng.random((size, base.size)) < 0.5
        deltas = _apply(statistic, np.where(swap, base, cand)) - _apply(statistic, np.where(swap, cand, base))
        extreme += int(np.sum(np.abs(deltas) >= threshold))
    return min(1.0, (extreme + 1) / (n_resamples + 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values in input order; NaNs stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, math.nan)
    order = np.flatnonzero(valid)[np.argsort(p[valid], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]
    # The running maximum keeps the adjusted values monotone in the sorted order.
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return [float(x) for x in adjusted]


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _as_1d(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_settings(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _apply(statistic: Statistic, samples: np.ndarray) -> np.ndarray:
    """statistic over each row of a (resamples x items) block."""
    try:
        result = np.asarray(statistic(samples, axis=1), dtype=float)
    except TypeError:
        # A statistic without an axis argument: fall back to one call per resample.
        return np.array([float(statistic(row)) for row in samples])
    if result.shape != (samples.shape[0],):
        raise ValueError("statistic(samples, axis=1) must return one value per resample")
    return result


def _percentile_interval(
    resampled: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // n_items)
    stats = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        idx = rng.integers(0, n_items, size=(size, n_items))
        stats[start : start + size] = resampled(idx)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))
