"""Tests for edgeeval.metrics: scoring flags, per-model summaries and paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from edgeeval.metrics import compare_pair, score_multiple_choice, summarize
from edgeeval.stats import holm, mcnemar_exact


def _records(rows: list[tuple[str, str, str, str, str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "task": pl.String,
            "example_id": pl.String,
            "gold": pl.String,
            "parsed": pl.String,
            "error": pl.String,
        },
        orient="row",
    )


def _scored_pair(n: int, base_right: set[int], cand_right: set[int], task: str = "t") -> list:
    """Rows for models 'gen' and 'bio' on n items; wrong answers are parsed as 'B'."""
    rows = []
    for model, right in (("gen", base_right), ("bio", cand_right)):
        for i in range(n):
            rows.append((model, task, f"q{i}", "A", "A" if i in right else "B", None))
    return rows


def test_score_multiple_choice_flags() -> None:
    records = _records(
        [
            ("m", "t", "1", "A", "A", None),  # right
            ("m", "t", "2", "A", "B", None),  # wrong
            ("m", "t", "3", "A", None, None),  # unparseable
            ("m", "t", "4", "A", None, "timeout"),  # engine error
            ("m", "t", "5", "A", "A", "context overflow"),  # error wins over a stale parse
        ]
    )
    scored = score_multiple_choice(records)
    assert scored["correct"].to_list() == [True, False, False, False, False]
    assert scored["invalid"].to_list() == [False, False, True, False, False]
    assert scored["errored"].to_list() == [False, False, False, True, True]
    assert all(scored[c].dtype == pl.Boolean for c in ("correct", "invalid", "errored"))


def test_score_multiple_choice_handles_all_null_columns() -> None:
    records = pl.DataFrame(
        {
            "model": ["m"],
            "task": ["t"],
            "example_id": ["1"],
            "gold": ["A"],
            "parsed": [None],
            "error": [None],
        }
    )
    scored = score_multiple_choice(records)
    assert scored.select("correct", "invalid", "errored").row(0) == (False, True, False)


def test_score_multiple_choice_requires_columns() -> None:
    with pytest.raises(ValueError, match="parsed"):
        score_multiple_choice(pl.DataFrame({"model": ["m"], "task": ["t"]}))


def test_summarize_values_counts_and_determinism() -> None:
    records = _records(
        [("m", "t", str(i), "A", "A", None) for i in range(6)]
        + [("m", "t", "6", "A", None, None), ("m", "t", "7", "A", None, "oom")]
        + [("m", "u", "0", "A", "B", None)]
    )
    summary = summarize(score_multiple_choice(records), seed=1)
    assert summary.columns == ["model", "task", "metric", "value", "ci_low", "ci_high", "n"]
    values = {(r["task"], r["metric"]): r for r in summary.iter_rows(named=True)}
    assert set(values) == {
        (task, metric) for task in "tu" for metric in ("accuracy", "invalid_rate", "error_rate")
    }
    assert values[("t", "accuracy")]["value"] == 6 / 8  # errors count against accuracy
    assert values[("t", "invalid_rate")]["value"] == 1 / 8
    assert values[("t", "error_rate")]["value"] == 1 / 8
    assert values[("t", "accuracy")]["n"] == 8
    assert values[("u", "accuracy")]["value"] == 0.0
    for row in summary.iter_rows(named=True):
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert summarize(score_multiple_choice(records), seed=1).equals(summary)


def test_compare_pair_counts_and_mcnemar() -> None:
    # 20 items: both right on 0-9, baseline only on 10-11 (b=2), candidate only on 12-19 (c=8).
    scored = score_multiple_choice(
        _records(_scored_pair(20, set(range(12)), set(range(10)) | set(range(12, 20))))
    )
    table = compare_pair(scored, "gen-vs-bio", "gen", "bio", seed=0)
    assert table.columns == [
        "pair", "task", "metric", "baseline", "candidate", "delta", "ci_low", "ci_high",
        "p_value", "test", "n_paired", "b", "c", "p_holm",
    ]
    acc = table.filter(pl.col("metric") == "accuracy").row(0, named=True)
    assert (acc["pair"], acc["task"], acc["test"]) == ("gen-vs-bio", "t", "mcnemar_exact")
    assert (acc["n_paired"], acc["b"], acc["c"]) == (20, 2, 8)
    assert acc["baseline"] == pytest.approx(0.6)
    assert acc["candidate"] == pytest.approx(0.9)
    assert acc["delta"] == pytest.approx(0.3)
    assert acc["ci_low"] <= acc["delta"] <= acc["ci_high"]
    # n=10, k=2: 2 * (1 + 10 + 45) / 1024
    assert acc["p_value"] == pytest.approx(112 / 1024)
    assert acc["p_holm"] == acc["p_value"]  # a single task: nothing to correct for
    inv = table.filter(pl.col("metric") == "invalid_rate").row(0, named=True)
    assert (inv["b"], inv["c"], inv["p_value"], inv["delta"]) == (0, 0, 1.0, 0.0)


def test_compare_pair_pairs_only_shared_examples() -> None:
    rows = _scored_pair(5, {0, 1, 2}, {0, 1, 2, 3})
    rows.append(("gen", "t", "only-gen", "A", "A", None))
    rows.append(("bio", "t", "only-bio", "A", "B", None))
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    acc = table.filter(pl.col("metric") == "accuracy").row(0, named=True)
    assert acc["n_paired"] == 5
    assert acc["baseline"] == pytest.approx(0.6) and acc["candidate"] == pytest.approx(0.8)


def test_compare_pair_invalid_rate_uses_invalid_flags() -> None:
    rows = [
        ("gen", "t", "1", "A", None, None),
        ("gen", "t", "2", "A", None, None),
        ("gen", "t", "3", "A", "A", None),
        ("bio", "t", "1", "A", "A", None),
        ("bio", "t", "2", "A", "A", None),
        ("bio", "t", "3", "A", None, None),
    ]
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    inv = table.filter(pl.col("metric") == "invalid_rate").row(0, named=True)
    assert (inv["b"], inv["c"]) == (2, 1)
    assert inv["delta"] == pytest.approx(1 / 3 - 2 / 3)
    assert inv["p_value"] == mcnemar_exact(2, 1)
    assert inv["test"] == "mcnemar_exact"


def test_compare_pair_holm_within_each_metric() -> None:
    rows = (
        _scored_pair(30, set(range(5)), set(range(25)), task="medqa")
        + _scored_pair(30, set(range(10)), set(range(14)), task="pubmedqa")
        + _scored_pair(30, set(range(20)), set(range(20)), task="mmlu")
    )
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    assert table["task"].unique(maintain_order=True).to_list() == ["medqa", "pubmedqa", "mmlu"]
    for metric in ("accuracy", "invalid_rate"):
        part = table.filter(pl.col("metric") == metric)
        assert part["p_holm"].to_list() == pytest.approx(holm(part["p_value"].to_list()))
    acc = table.filter(pl.col("metric") == "accuracy")
    assert acc["p_holm"][0] == pytest.approx(min(1.0, 3 * mcnemar_exact(0, 20)))


def test_compare_pair_task_missing_for_one_model_is_reported_unpaired() -> None:
    rows = _scored_pair(4, {0}, {0, 1}) + [("gen", "extra", "x1", "A", "A", None)]
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    extra = table.filter(pl.col("task") == "extra")
    assert extra.height == 2
    assert extra["n_paired"].to_list() == [0, 0]
    assert all(math.isnan(v) for v in extra["p_value"].to_list())
    assert all(math.isnan(v) for v in extra["p_holm"].to_list())
    # The NaN row is not counted by Holm, so the real task keeps its unadjusted p-value.
    is_real = (pl.col("task") == "t") & (pl.col("metric") == "accuracy")
    real = table.filter(is_real).row(0, named=True)
    assert real["p_holm"] == real["p_value"]


def test_compare_pair_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    right_a = {i for i in range(100) if rng.random() < 0.5}
    right_b = {i for i in range(100) if rng.random() < 0.6}
    scored = score_multiple_choice(_records(_scored_pair(100, right_a, right_b)))
    first = compare_pair(scored, "p", "gen", "bio", seed=5)
    assert compare_pair(scored, "p", "gen", "bio", seed=5).equals(first)


def test_compare_pair_rejects_unknown_model_and_duplicates() -> None:
    scored = score_multiple_choice(_records(_scored_pair(3, {0}, {1})))
    with pytest.raises(ValueError, match="nope"):
        compare_pair(scored, "p", "gen", "nope")
    duplicated = pl.concat([scored, scored.filter(pl.col("model") == "gen").head(1)])
    with pytest.raises(ValueError, match="several records"):
        compare_pair(duplicated, "p", "gen", "bio")
