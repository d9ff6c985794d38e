"""Metrics as Polars expressions over the records."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from edgeeval import stats

REQUIRED_COLUMNS = ("model", "task", "example_id", "gold", "parsed", "error")
SUMMARY_METRICS = {"accuracy": "correct", "invalid_rate": "invalid", "error_rate": "errored"}
# Only these are compared between models: error_rate reflects the engine, not the model.
PAIRED_METRICS = {"accuracy": "correct", "invalid_rate": "invalid"}

SUMMARY_SCHEMA = {
    "model": pl.String,
    "task": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n": pl.Int64,
}
COMPARISON_SCHEMA = {
    "pair": pl.String,
    "task": pl.String,
    "metric": pl.String,
    "baseline": pl.Float64,
    "candidate": pl.Float64,
    "delta": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p_value": pl.Float64,
    "test": pl.String,
    "n_paired": pl.Int64,
    "b": pl.Int64,
    "c": pl.Int64,
    "p_holm": pl.Float64,
}


def errored_expr() -> pl.Expr:
    """The engine failed on this item (no answer text at all)."""
    return pl.col("error").is_not_null()


def invalid_expr() -> pl.Expr:
    """The engine answered but the parser could not tell which option was chosen."""
    return pl.col("parsed").is_null() & pl.col("error").is_null()


def correct_expr() -> pl.Expr:
    """Parsed answer equals gold; a null on either side or an engine error counts as wrong."""
    same = pl.col("parsed").cast(pl.String) == pl.col("gold").cast(pl.String)
    return (same & pl.col("error").is_null()).fill_null(False)


def score_multiple_choice(records: pl.DataFrame) -> pl.DataFrame:
    """Add boolean columns `correct`, `invalid` and `errored` to the records."""
    _require_columns(records, REQUIRED_COLUMNS)
    return records.with_columns(
        correct=correct_expr(), invalid=invalid_expr(), errored=errored_expr()
    )


def summarize(scored: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """One row per (model, task, metric) with a seeded bootstrap CI and the item count."""
    _require_columns(scored, ("model", "task", *SUMMARY_METRICS.values()))
    rows = []
    for (model, task), group in scored.group_by(["model", "task"], maintain_order=True):
        for metric, flag in SUMMARY_METRICS.items():
            value, low, high = stats.bootstrap_ci(_flags(group, flag), seed=seed)
            rows.append((model, task, metric, value, low, high, group.height))
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA, orient="row")


def compare_pair(
    scored: pl.DataFrame, pair: str, baseline: str, candidate: str, seed: int = 0
) -> pl.DataFrame:
    """Paired baseline-vs-candidate differences per (task, metric), with Holm within each metric."""
    _require_columns(scored, ("model", "task", "example_id", *PAIRED_METRICS.values()))
    _require_models(scored, (baseline, candidate))
    base = _model_rows(scored, baseline)
    cand = _model_rows(scored, candidate)
    # Inner join: an item only one model has cannot be paired; n_paired records how many could.
    joined = base.join(cand, on=["task", "example_id"], how="inner", suffix="_cand")
    tasks = pl.concat([base["task"], cand["task"]]).unique(maintain_order=True)
    rows = [
        _compare_task(joined.filter(pl.col("task") == task), pair, task, metric, flag, seed)
        for task in tasks
        for metric, flag in PAIRED_METRICS.items()
    ]
    table = pl.DataFrame(rows, schema=COMPARISON_SCHEMA, orient="row")
    return _add_holm(table)


def _compare_task(
    paired: pl.DataFrame, pair: str, task: str, metric: str, flag: str, seed: int
) -> tuple[object, ...]:
    """One comparison row; b counts items flagged for baseline only, c for candidate only."""
    if paired.height == 0:
        # Nothing paired: report the gap, not a p-value of 1.0 that reads as "no difference".
        nan = math.nan
        return (pair, task, metric, nan, nan, nan, nan, nan, nan, "mcnemar_exact", 0, 0, 0, nan)
    base, cand = _flags(paired, flag), _flags(paired, f"{flag}_cand")
    b, c = int(np.sum(base & ~cand)), int(np.sum(~base & cand))
    delta, low, high = stats.paired_bootstrap(base, cand, seed=seed)
    p_value = stats.mcnemar_exact(b, c)
    return (
        pair, task, metric, float(base.mean()), float(cand.mean()), delta, low, high,
        p_value, "mcnemar_exact", paired.height, b, c, math.nan,
    )


def _add_holm(table: pl.DataFrame) -> pl.DataFrame:
    """Holm-adjust p-values across tasks, separately for each metric."""
    adjusted = np.full(table.height, math.nan)
    metrics = table["metric"].to_numpy()
    p_values = table["p_value"].to_numpy()
    for metric in PAIRED_METRICS:
        where = np.flatnonzero(metrics == metric)
        adjusted[where] = stats.holm(p_values[where].tolist())
    return table.with_columns(p_holm=pl.Series(adjusted, dtype=pl.Float64))


def _model_rows(scored: pl.DataFrame, model: str) -> pl.DataFrame:
    rows = scored.filter(pl.col("model") == model).select(
        "task", "example_id", *PAIRED_METRICS.values()
    )
    duplicated = rows.select("task", "example_id").is_duplicated()
    if duplicated.any():
        example = rows.filter(duplicated).row(0)
        raise ValueError(
            f"model {model!r} has several records for task {example[0]!r}, example {example[1]!r}"
        )
    return rows


def _flags(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame[column].fill_null(False).cast(pl.Boolean).to_numpy().astype(bool)


def _require_columns(frame: pl.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; have {frame.columns}")


def _require_models(scored: pl.DataFrame, models: tuple[str, ...]) -> None:
    present = set(scored["model"].unique().to_list())
    absent = [model for model in models if model not in present]
    if absent:
        raise ValueError(f"no records for model(s) {absent}; have {sorted(present)}")
