"""Drift between two runs of the same model (another quantization, another machine, another llama.cpp): which
answers flipped between right and wrong, how often the answers agree, how far loglik's option distributions moved
(KL divergence, as Dutta et al., NeurIPS 2024, "Accuracy is not all you need", measure a quantized model), and
whether a pair's verdict holds in both runs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from edgeeval.scoring import stats
from edgeeval.scoring.robustness import SIGNIFICANCE, log_softmax

DRIFT_SCHEMA = {"pair": pl.String, "task": pl.String, "n": pl.Int64, "right_to_wrong": pl.Int64,
                "wrong_to_right": pl.Int64, "p_mcnemar": pl.Float64, "accuracy_before": pl.Float64,
                "accuracy_after": pl.Float64, "agreement": pl.Float64, "kl_items": pl.Int64, "kl_mean": pl.Float64,
                "kl_p95": pl.Float64, "kl_max": pl.Float64, "same_top": pl.Float64}
VERDICT_SCHEMA = {"pair": pl.String, "task": pl.String, "metric": pl.String, "first_run": pl.String,
                  "other_run": pl.String, "delta_first": pl.Float64, "delta_other": pl.Float64,
                  "p_holm_first": pl.Float64, "p_holm_other": pl.Float64, "holds": pl.Boolean}
UNIT = ["task", "example_id", "repeat"]


def _answer(frame: pl.DataFrame) -> pl.Expr:
    """The answer as compared: 'error', the parsed answer, or 'invalid' (two invalid replies agree)."""
    return (pl.when(pl.col("error").is_not_null()).then(pl.lit("\0error"))
            .otherwise(pl.col("parsed").cast(pl.String).fill_null("\0invalid")))


def drift(scored: pl.DataFrame, pair: str, before: str, after: str) -> pl.DataFrame:
    """Per task, the units (item and repetition) both arms answered, paired: flips each way of `correct` with the
    exact McNemar p, the share of identical answers, and in loglik mode the KL divergence KL(before || after)
    of the options' softmax distributions (mean, 95th percentile, max over units) and the share of units whose
    best option is the same."""
    keys = [k for k in UNIT if k in scored.columns]
    columns = [c for c in ("correct", "option_logprobs") if c in scored.columns]

    def arm(model: str) -> pl.DataFrame:
        rows = scored.filter(pl.col("model") == model)
        return rows.select(*keys, _answer(rows).alias("answer"), *columns)

    paired = arm(before).join(arm(after), on=keys, how="inner", suffix="_after", nulls_equal=True,
                              maintain_order="left")
    rows = []
    for (task,), part in paired.group_by("task", maintain_order=True):
        rows.append((pair, task, *_flips(part), float((part["answer"] == part["answer_after"]).mean()),  # type: ignore[arg-type]
                     *_divergence(part)))
    return pl.DataFrame(rows, schema=DRIFT_SCHEMA, orient="row")


def _flips(part: pl.DataFrame) -> tuple[int, int | None, int | None, float, float, float]:
    if "correct" not in part.columns:
        return (part.height, None, None, math.nan, math.nan, math.nan)
    was = part["correct"].cast(pl.Boolean).fill_null(False).to_numpy()
    now = part["correct_after"].cast(pl.Boolean).fill_null(False).to_numpy()
    worse, better = int(np.sum(was & ~now)), int(np.sum(~was & now))
    return (part.height, worse, better, stats.mcnemar_exact(worse, better), float(was.mean()), float(now.mean()))


def _divergence(part: pl.DataFrame) -> tuple[int, float, float, float, float]:
    if "option_logprobs" not in part.columns:
        return (0, math.nan, math.nan, math.nan, math.nan)
    both = part.filter(pl.col("option_logprobs").is_not_null() & pl.col("option_logprobs_after").is_not_null()
                       & (pl.col("option_logprobs").list.len() == pl.col("option_logprobs_after").list.len()))
    if not both.height:
        return (0, math.nan, math.nan, math.nan, math.nan)
    divergences, same = [], []
    for first, second in zip(both["option_logprobs"].to_list(), both["option_logprobs_after"].to_list()):
        p, q = log_softmax(np.array(first, dtype=float)), log_softmax(np.array(second, dtype=float))
        divergences.append(max(0.0, float(np.sum(np.exp(p) * (p - q)))))
        same.append(int(np.argmax(first)) == int(np.argmax(second)))
    values = np.array(divergences)
    return (values.size, float(values.mean()), float(np.percentile(values, 95)), float(values.max()),
            float(np.mean(same)))


def verdicts(comparison: pl.DataFrame, pair_runs: dict[str, list[tuple[str, str]]]) -> pl.DataFrame:
    """For a pair compared in several runs (`pair_runs`: pair name -> [(run, its comparison's pair label)], the
    first run first): per (task, metric) of the first run's comparison, whether every other run's comparison
    gives the same verdict: the same sign of the delta, and significant (p Holm < 0.05) in both or neither."""
    rows = []
    for pair, runs in pair_runs.items():
        (first_run, first_label), others = runs[0], runs[1:]
        base = comparison.filter(pl.col("pair") == first_label)
        for other_run, other_label in others:
            other = {(r["task"], r["metric"]): r for r in comparison.filter(pl.col("pair") == other_label).iter_rows(named=True)}
            for row in base.iter_rows(named=True):
                match = other.get((row["task"], row["metric"]))
                if match is None:
                    continue
                holds = (_sign(row["delta"]) == _sign(match["delta"])
                         and _significant(row["p_holm"]) == _significant(match["p_holm"]))
                rows.append((pair, row["task"], row["metric"], first_run, other_run, row["delta"], match["delta"],
                             row["p_holm"], match["p_holm"], holds))
    return pl.DataFrame(rows, schema=VERDICT_SCHEMA, orient="row")


def _sign(value: float | None) -> int:
    if value is None or math.isnan(value):
        return 0
    return int(np.sign(value))


def _significant(p: float | None) -> bool:
    return p is not None and not math.isnan(p) and p < SIGNIFICANCE
