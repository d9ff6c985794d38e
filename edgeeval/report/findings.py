"""What the numbers say: which direction is better for a metric, a verdict per paired row, and the
headline tally per pair ("the fine-tune is worse on 5 of 7 tasks and gives more invalid answers")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from edgeeval import kinds

SIGNIFICANCE = 0.05



def lower_is_better(metric: str) -> bool:
    """Metrics that count failures (fewer is better), as the task kinds declare them."""
    return kinds.lower_is_better(metric)


def is_hallucination_measure(metric: str) -> bool:
    """Invalid answers, engine errors, hallucinations: the 'makes things up / fails' measures."""
    return lower_is_better(metric)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def significant(row: dict) -> bool:
    p = row.get("p_holm", row.get("p_value"))
    return p is not None and not _missing(p) and p < SIGNIFICANCE


def favours(row: dict) -> str | None:
    """'candidate' or 'baseline' when the Holm-adjusted difference is significant, else None."""
    if not significant(row) or _missing(row.get("delta")) or row["delta"] == 0:
        return None
    candidate_higher = row["delta"] > 0
    return "candidate" if candidate_higher != lower_is_better(row["metric"]) else "baseline"


def verdict(row: dict, baseline: str = "baseline", candidate: str = "candidate") -> str:
    """Plain words for one paired row, judged on the Holm-adjusted p-value."""
    if _missing(row.get("delta")):
        return "no paired examples"
    side = favours(row)
    if side is None:
        return "no significant difference"
    return f"{candidate if side == 'candidate' else baseline} better"


@dataclass(frozen=True)
class Tally:
    """How often the candidate came out worse / better than the baseline on one kind of metric."""

    label: str
    """'quality' or the failure metric's name (invalid_rate, hallucination_rate, ...)."""
    tasks: int
    worse: int
    worse_significant: int
    better: int
    better_significant: int


# The metric that speaks for a task in the headline, when the task has it (else its first
# higher-is-better metric): the study's own choices for answers, abstention, summaries and codes.
HEADLINE_METRICS = ("accuracy", "abstention_rate", "rougeL", "code_f1", "macro_f1")


def quality_metric(task_rows: pl.DataFrame) -> str | None:
    """The task's headline quality metric."""
    metrics = [m for m in task_rows["metric"].to_list() if not lower_is_better(m)]
    preferred = [m for m in HEADLINE_METRICS if m in metrics]
    return (preferred or metrics or [None])[0]


def tally_pair(comparison: pl.DataFrame) -> list[Tally]:
    """Quality first (one headline metric per task), then each failure metric the pair has."""
    rows = comparison.filter(pl.col("delta").is_not_nan())
    quality = []
    for (task,), task_rows in rows.group_by("task", maintain_order=True):
        metric = quality_metric(task_rows)
        if metric is not None:
            quality.append(task_rows.filter(pl.col("metric") == metric).row(0, named=True))
    tallies = [_tally("quality", quality)] if quality else []
    failures = [m for m in rows["metric"].unique(maintain_order=True).to_list() if lower_is_better(m)]
    for metric in failures:
        tallies.append(_tally(metric, rows.filter(pl.col("metric") == metric).to_dicts()))
    return tallies


def _tally(label: str, rows: list[dict]) -> Tally:
    worse = [r for r in rows if _candidate_worse(r)]
    better = [r for r in rows if _candidate_better(r)]
    return Tally(label, len(rows), len(worse), sum(map(significant, worse)),
                 len(better), sum(map(significant, better)))


def _candidate_worse(row: dict) -> bool:
    return row["delta"] > 0 if lower_is_better(row["metric"]) else row["delta"] < 0


def _candidate_better(row: dict) -> bool:
    return row["delta"] < 0 if lower_is_better(row["metric"]) else row["delta"] > 0


_FAILURE_WORDS = {
    "invalid_rate": "gives invalid (unreadable) answers",
    "error_rate": "fails with engine errors",
    "hallucination_rate": "hallucinates",
}


def describe(tally: Tally) -> str:
    """One clause, e.g. 'scores lower on 5 of 7 tasks (2 significantly) and higher on 2 (none significantly)'."""
    of = f"of {tally.tasks} task{'s' if tally.tasks != 1 else ''}"
    worse = f"{tally.worse} {of} ({_how_many(tally.worse_significant)} significantly)"
    better = f"{tally.better} ({_how_many(tally.better_significant)} significantly)"
    if tally.label == "quality":
        return f"scores lower on {worse} and higher on {better}"
    what = _FAILURE_WORDS.get(tally.label, f"has a higher {tally.label}")
    return f"{what} more often on {worse} and less often on {better}"


def _how_many(count: int) -> str:
    return str(count) if count else "none"


def headline(candidate: str, baseline: str, tallies: list[Tally]) -> str:
    """The pair's message in one sentence."""
    if not tallies:
        return f"{candidate} vs {baseline}: no paired results yet."
    clauses = [describe(t) for t in tallies]
    return f"Compared with {baseline}, {candidate} " + "; it ".join(clauses) + "."


def significant_findings(comparison: pl.DataFrame, baseline: str, candidate: str) -> str:
    """The rows that carry a verdict, in one line: what a reader should not miss."""
    found = [f"{verdict(r, baseline, candidate)} on {r['task']} {r['metric']}"
             for r in comparison.iter_rows(named=True) if favours(r) is not None]
    if not found:
        return "No difference is significant after Holm correction (p < 0.05)."
    return "Significant after Holm correction (p < 0.05): " + "; ".join(found) + "."
