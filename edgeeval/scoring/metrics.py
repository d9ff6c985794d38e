"""Metrics as Polars expressions over the records: per-example scores, per-model summaries, paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from edgeeval import kinds
from edgeeval.kinds import Metric
from edgeeval.kinds.base import correct_expr, errored_expr, invalid_expr
from edgeeval.scoring import stats

# Every metric but macro-F1 and the confusion table is a ratio of sums over examples, sum(numerator) /
# sum(denominator): a mean when the denominator is 1 (accuracy, ROUGE), a micro-average otherwise
# (code_precision_micro = right codes / generated codes). A ratio with nothing in its denominator is 0
# (no generated codes: precision 0, hallucination rate 0), as CLUE scores an empty prediction.
# Errors (engine crash, prompt too long) count against every quality metric like a wrong answer, are
# reported on their own as error_rate, and are never hallucinations.
# Paired comparisons: a paired bootstrap CI for every delta; the p-value comes from the test the task's kind
# declares for the metric (edgeeval.kinds): an exact McNemar test for per-example yes/no metrics (accuracy,
# invalid_rate, abstention_rate, hallucination_rate of a multiple-choice or abstention task) and a paired
# permutation (sign-flip) test otherwise; Holm adjusts each metric's p-values across the tasks compared.

REQUIRED_COLUMNS = ("model", "task", "example_id", "gold", "parsed", "error")
DEFAULT_METRICS = ("accuracy", "invalid_rate", "error_rate")

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


# --- per-example scores ----------------------------------------------------------------------------------


def score_records(records: pl.DataFrame) -> pl.DataFrame:
    """Add the per-example score columns of each row's task kind (column `kind`; multiple choice when
    absent): correct/invalid/errored for answers, rouge*/problem_f1 for summaries, code_* and
    category_* for ICD coding, abstained/hallucinated for abstention, and so on. Row order is kept."""
    _require_columns(records, REQUIRED_COLUMNS)
    if "kind" not in records.columns:
        records = records.with_columns(kind=pl.lit(kinds.DEFAULT))
    records = records.with_columns(pl.col("kind").fill_null(kinds.DEFAULT)).with_row_index("_row")
    parts = [kinds.get(kind).score(part) for (kind,), part in records.group_by("kind", maintain_order=True)]
    if not parts:
        return records.drop("_row").with_columns(correct=correct_expr(), invalid=invalid_expr(), errored=errored_expr())
    return pl.concat(parts, how="diagonal_relaxed").sort("_row").drop("_row")


# The report calls the scorer by this name; it handles every kind, not only multiple choice.
score_multiple_choice = score_records


def metric_of(frame: pl.DataFrame, name: str) -> Metric:
    """The metric `name` as the frame's task kind declares it (a frame holds one task, so one kind); a
    name the kind does not declare is read as the first kind that does (frames built by hand)."""
    kind = frame["kind"].drop_nulls()[0] if "kind" in frame.columns and frame["kind"].drop_nulls().len() else kinds.DEFAULT
    try:
        return kinds.metric(kind, name)
    except KeyError:
        for other in kinds.KINDS.values():
            if name in other.metric_names:
                return other.metric(name)
        raise ValueError(f"unknown metric '{name}'") from None


# --- statistics of one metric ----------------------------------------------------------------------------

IndexStatistic = Callable[..., Any]


def metric_statistic(name: str, frame: pl.DataFrame) -> IndexStatistic:
    """statistic(indices[, axis]) -> the metric over frame rows `indices` (one row of indices per
    resample when 2-D), the form stats.bootstrap_ci and paired_bootstrap resample."""
    metric = metric_of(frame, name)
    if metric.form == "macro_f1":
        return _macro_f1_statistic(frame)
    if metric.ratio is None:
        raise ValueError(f"metric '{name}' is a table, not a single number")
    ratio = metric.ratio
    values = frame.select(ratio.numerator.alias("num"), ratio.denominator.alias("den"))
    return _ratio_statistic(values["num"].to_numpy(), values["den"].to_numpy())


def _ratio_statistic(num: np.ndarray, den: np.ndarray) -> IndexStatistic:
    def statistic(indices: np.ndarray, axis: int | None = None) -> np.ndarray:
        idx = np.asarray(indices).astype(np.intp)
        top, bottom = num[idx].sum(axis=-1), den[idx].sum(axis=-1)
        return np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), 0.0)

    return statistic


def _macro_f1_statistic(frame: pl.DataFrame) -> IndexStatistic:
    """Macro-F1 over the labels that occur (as gold or answer) among the examples drawn, as scikit-learn
    computes it; an invalid answer or an error is a miss for its gold label and a false alarm for none."""
    gold = frame["gold"].cast(pl.String).to_list()
    answer = [p if e is None else None for p, e in zip(frame["parsed"].to_list(), frame["error"].to_list())]
    labels = sorted({g for g in gold if g is not None} | {a for a in answer if a is not None})
    code = {label: i for i, label in enumerate(labels)}
    g = np.array([code.get(x, -1) for x in gold])
    a = np.array([code.get(x, -2) if x is not None else -2 for x in answer])

    def statistic(indices: np.ndarray, axis: int | None = None) -> np.ndarray:
        idx = np.asarray(indices).astype(np.intp)
        gi, ai = g[idx], a[idx]
        total: Any = 0.0  # a float per resample, as numpy arrays
        present: Any = 0
        for label in range(len(labels)):
            tp = ((gi == label) & (ai == label)).sum(axis=-1)
            support = (gi == label).sum(axis=-1) + (ai == label).sum(axis=-1)  # 2tp + fp + fn
            total = total + np.where(support > 0, 2 * tp / np.maximum(support, 1), 0.0)
            present = present + (support > 0)
        return total / np.maximum(present, 1)

    return statistic


# --- repetitions -------------------------------------------------------------------------------------

ITEM_KEYS = ["model", "task", "example_id"]
REPETITION_SCHEMA = {"model": pl.String, "task": pl.String, "metric": pl.String, "repeats": pl.Int64,
                     "mean": pl.Float64, "sd": pl.Float64, "min": pl.Float64, "max": pl.Float64}


def per_item_means(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, task, item): the repetitions of an item (tasks with `repeats`) have their per-example
    scores averaged, so `correct` becomes the share of repetitions answered right, and their other columns (the
    answer text, gold) taken from the first repetition. Rows of items asked once pass unchanged, in order."""
    if "repeat" not in scored.columns or not scored["repeat"].is_not_null().any():
        return scored
    numeric = [c for c, dtype in scored.schema.items()
               if c not in (*ITEM_KEYS, "repeat") and (dtype.is_numeric() or dtype == pl.Boolean)]
    aggregations = [pl.col(c).cast(pl.Float64).mean() if c in numeric else pl.col(c).first()
                    for c in scored.columns if c not in (*ITEM_KEYS, "repeat")]
    means = scored.group_by(ITEM_KEYS, maintain_order=True).agg(aggregations)
    return means.with_columns(repeat=pl.lit(None, pl.Int64)).select(scored.columns)


def repetition_spread(scored: pl.DataFrame) -> pl.DataFrame:
    """For tasks with repeats: each metric computed on each repetition alone, then its mean, standard deviation,
    minimum and maximum across the repetitions, per (model, task, metric)."""
    if "repeat" not in scored.columns or not scored["repeat"].is_not_null().any():
        return pl.DataFrame(schema=REPETITION_SCHEMA)
    rows = []
    repeated = scored.filter(pl.col("repeat").is_not_null())
    for (model, task), group in repeated.group_by(["model", "task"], maintain_order=True):
        for metric in task_metrics(group):
            if metric_of(group, metric).form == "table" or not computed(metric, group):
                continue
            values = np.array([metric_statistic(metric, part)(np.arange(part.height))
                               for _, part in group.group_by("repeat", maintain_order=True)], dtype=float)
            rows.append((model, task, metric, values.size, float(values.mean()),
                         float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                         float(values.min()), float(values.max())))
    return pl.DataFrame(rows, schema=REPETITION_SCHEMA, orient="row")


# --- summaries ---------------------------------------------------------------------------------------


def summarize(scored: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """One row per (model, task, metric) with a seeded bootstrap CI and the item count; the metrics are
    the task's own (column `metrics`, comma-separated; accuracy, invalid_rate, error_rate when absent). The
    items of a task with repeats are their repetitions' means (the confusion table counts every answer)."""
    _require_columns(scored, ("model", "task"))
    rows = []
    for (model, task), group in scored.group_by(["model", "task"], maintain_order=True):
        items = per_item_means(group)
        for metric in task_metrics(group):
            table = metric_of(group, metric).form == "table"
            rows.extend(_summary_rows(model, task, metric, group if table else items, seed))
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA, orient="row")


def computed(name: str, frame: pl.DataFrame) -> bool:
    """Whether the frame has what the metric is computed from (a metric whose scores come from a model of their
    own, as BERTScore's, is not computed where the run has none: reported as such, never as 0)."""
    requires = metric_of(frame, name).requires
    return requires is None or (requires in frame.columns and frame[requires].is_not_null().any())


def task_metrics(group: pl.DataFrame) -> list[str]:
    declared = group["metrics"].drop_nulls() if "metrics" in group.columns else pl.Series([], dtype=pl.String)
    return declared[0].split(",") if declared.len() else list(DEFAULT_METRICS)


def _summary_rows(model: str, task: str, metric: str, group: pl.DataFrame, seed: int) -> list[tuple]:
    if metric_of(group, metric).form == "table":
        return confusion_rows(model, task, group, seed)
    if not computed(metric, group):
        return [(model, task, metric, math.nan, math.nan, math.nan, 0)]
    statistic = metric_statistic(metric, group)
    value, low, high = stats.bootstrap_ci(np.arange(group.height), statistic, seed=seed)
    return [(model, task, metric, value, low, high, group.height)]


def answer_column(frame: pl.DataFrame) -> pl.Series:
    """The answer as the confusion table shows it: the parsed answer, 'invalid', or 'error'."""
    return frame.select(
        pl.when(pl.col("error").is_not_null()).then(pl.lit("error"))
        .otherwise(pl.col("parsed").cast(pl.String).fill_null("invalid")).alias("answer")
    )["answer"]


def confusion_rows(model: str, task: str, group: pl.DataFrame, seed: int) -> list[tuple]:
    """Metric rows 'confusion_<gold>_as_<answer>': the share of the examples with that gold answer that
    got that answer (each gold row of the table sums to 1), n = the examples with that gold answer."""
    answers = answer_column(group).to_numpy()
    golds = group["gold"].cast(pl.String).to_numpy()
    rows = []
    for gold in sorted(set(golds)):
        mine = answers[golds == gold]
        for answer in sorted(set(answers), key=lambda a: (a in ("invalid", "error"), a)):
            value, low, high = stats.bootstrap_ci((mine == answer).astype(float), seed=seed)
            rows.append((model, task, f"confusion_{gold}_as_{answer}", value, low, high, int(mine.size)))
    return rows


# --- paired comparisons ------------------------------------------------------------------------------


def compare_pair(
    scored: pl.DataFrame, pair: str, baseline: str, candidate: str, seed: int = 0
) -> pl.DataFrame:
    """Paired baseline-vs-candidate differences per (task, metric), with Holm within each metric."""
    _require_columns(scored, ("model", "task", "example_id"))
    _require_models(scored, (baseline, candidate))
    scored = per_item_means(scored)  # repetitions of an item: the paired tests compare their means
    base = _model_rows(scored, baseline)
    cand = _model_rows(scored, candidate)
    # Inner join: an item only one model has cannot be paired; n_paired records how many could.
    keys = base.select("task", "example_id").join(
        cand.select("task", "example_id"), on=["task", "example_id"], how="inner", maintain_order="left"
    )
    rows = []
    for task in pl.concat([base["task"], cand["task"]]).unique(maintain_order=True).to_list():
        both = pl.concat([base.filter(pl.col("task") == task), cand.filter(pl.col("task") == task)],
                         how="diagonal_relaxed")
        task_keys = keys.filter(pl.col("task") == task)
        arms = [task_keys.join(rows_, on=["task", "example_id"], how="left", maintain_order="left")
                for rows_ in (base.filter(pl.col("task") == task), cand.filter(pl.col("task") == task))]
        for metric in task_metrics(both):
            if metric_of(both, metric).test is not None and computed(metric, arms[0]) and computed(metric, arms[1]):
                rows.append(_compare_metric(arms[0], arms[1], pair, task, metric, seed))
    table = pl.DataFrame(rows, schema=COMPARISON_SCHEMA, orient="row")
    return _add_holm(table)


def _compare_metric(base: pl.DataFrame, cand: pl.DataFrame, pair: str, task: str, metric: str,
                    seed: int) -> tuple[object, ...]:
    """One comparison row; for McNemar, b counts items flagged for baseline only, c for candidate only."""
    n = base.height
    if n == 0:
        # Nothing paired: report the gap, not a p-value of 1.0 that reads as "no difference".
        nan = math.nan
        test = metric_of(pl.concat([base, cand], how="diagonal_relaxed"), metric).test
        return (pair, task, metric, nan, nan, nan, nan, nan, nan, test, 0, 0, 0, nan)
    flags = _flags_if_binary(metric, base, cand)
    if flags is not None:
        return _mcnemar_row(pair, task, metric, *flags, seed)
    both = pl.concat([base, cand], how="diagonal_relaxed")
    # Rows 0..n-1 hold the baseline's answers, n..2n-1 the candidate's: one statistic reads either arm,
    # and resampling the same positions in both keeps the pairs together.
    statistic = metric_statistic(metric, both)
    base_idx, cand_idx = np.arange(n), np.arange(n, 2 * n)
    delta, low, high = stats.paired_bootstrap(base_idx, cand_idx, statistic, seed=seed)
    p_value = stats.paired_permutation(base_idx, cand_idx, statistic, seed=seed)
    return (pair, task, metric, float(statistic(base_idx)), float(statistic(cand_idx)), delta, low, high,
            p_value, "paired_permutation", n, None, None, math.nan)


def _flags_if_binary(metric: str, base: pl.DataFrame, cand: pl.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-example yes/no flags of both arms when the metric is one (every example weighs 1)."""
    declared = metric_of(pl.concat([base, cand], how="diagonal_relaxed"), metric)
    if declared.test != "mcnemar_exact" or declared.ratio is None:
        return None
    ratio = declared.ratio
    arms = [frame.select(ratio.numerator.alias("num"), ratio.denominator.alias("den")) for frame in (base, cand)]
    if any((arm["den"] != 1.0).any() or not arm["num"].is_in([0.0, 1.0]).all() for arm in arms):
        return None
    return arms[0]["num"].to_numpy() == 1.0, arms[1]["num"].to_numpy() == 1.0


def _mcnemar_row(pair: str, task: str, metric: str, base: np.ndarray, cand: np.ndarray,
                 seed: int) -> tuple[object, ...]:
    b, c = int(np.sum(base & ~cand)), int(np.sum(~base & cand))
    delta, low, high = stats.paired_bootstrap(base, cand, seed=seed)
    return (pair, task, metric, float(base.mean()), float(cand.mean()), delta, low, high,
            stats.mcnemar_exact(b, c), "mcnemar_exact", base.size, b, c, math.nan)


def holm_per_metric(table: pl.DataFrame) -> pl.DataFrame:
    """Holm-adjust a comparison table's p-values across all its rows (tasks, and pairs when it holds several),
    separately for each metric."""
    return _add_holm(table)


def _add_holm(table: pl.DataFrame) -> pl.DataFrame:
    """Holm-adjust p-values across tasks, separately for each metric."""
    adjusted = np.full(table.height, math.nan)
    metrics = table["metric"].to_numpy()
    p_values = table["p_value"].to_numpy()
    for metric in dict.fromkeys(metrics.tolist()):
        where = np.flatnonzero(metrics == metric)
        adjusted[where] = stats.holm(p_values[where].tolist())
    return table.with_columns(p_holm=pl.Series(adjusted, dtype=pl.Float64))


def _model_rows(scored: pl.DataFrame, model: str) -> pl.DataFrame:
    rows = scored.filter(pl.col("model") == model)
    duplicated = rows.select("task", "example_id").is_duplicated()
    if duplicated.any():
        example = rows.filter(duplicated).select("task", "example_id").row(0)
        raise ValueError(
            f"model {model!r} has several records for task {example[0]!r}, example {example[1]!r}"
        )
    return rows


def _require_columns(frame: pl.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; have {frame.columns}")


def _require_models(scored: pl.DataFrame, models: tuple[str, ...]) -> None:
    present = set(scored["model"].unique().to_list())
    absent = [model for model in models if model not in present]
    if absent:
        raise ValueError(f"no records for model(s) {absent}; have {sorted(present)}")
