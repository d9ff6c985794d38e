"""Whether a multiple-choice verdict is about the questions or about the option order: the share of answers given at
each position against gold's, a test of the chosen-letter distribution, and under `--permute` (every item asked
under cyclic rotations of its options) consistency, RStd and PriDe debiasing, as Zheng et al. (ICLR 2024, "Large
Language Models Are Not Robust Multiple Choice Selectors") define them.

Reads the scored records' position columns (edgeeval.scoring.records.position_columns): `answer_position` and
`gold_position` (from 0, among the options as shown), `answer_original` (the option the answer names, through the
rotation), `option_logprobs` (loglik: each shown option's deciding score)."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np
import polars as pl

from edgeeval import kinds
from edgeeval.scoring import stats

SIGNIFICANCE = 0.05
CALIBRATION_SHARE = 0.05
"""PriDe: the share of items whose rotations estimate the prior (Zheng et al. use 5% of the test set)."""
BIAS_TEST = ("Pearson's chi-square of the 2 x K table of the positions answered against the positions of gold, "
             "p from 10,000 seeded permutations of the pooled positions (valid at small counts); flagged when p < "
             f"{SIGNIFICANCE}")

POSITION_SCHEMA = {"model": pl.String, "task": pl.String, "position": pl.Int64, "name": pl.String,
                   "chosen": pl.Float64, "gold": pl.Float64, "recall": pl.Float64, "n": pl.Int64}
BIAS_SCHEMA = {"model": pl.String, "task": pl.String, "answers": pl.Int64, "top": pl.String,
               "top_share": pl.Float64, "gold_top_share": pl.Float64, "chi_square": pl.Float64,
               "p_value": pl.Float64, "flagged": pl.Boolean}
ROTATION_SCHEMA = {"model": pl.String, "task": pl.String, "rotations": pl.Int64, "items": pl.Int64,
                   "accuracy": pl.Float64, "accuracy_original_order": pl.Float64, "consistency": pl.Float64,
                   "rstd": pl.Float64, "pride_items": pl.Int64, "pride_raw": pl.Float64,
                   "pride_debiased": pl.Float64, "pride_gain": pl.Float64, "calibration": pl.String,
                   "prior": pl.String}


@dataclass(frozen=True)
class Robustness:
    """What the report shows about option order, per (model, task) of the multiple-choice and label tasks."""

    positions: pl.DataFrame
    """Per position: the share of answers given there, the share of gold there, and the recall there."""
    bias: pl.DataFrame
    """Per (model, task): the most-chosen position and the test of choices against gold's distribution."""
    rotations: pl.DataFrame
    """Per permuted (model, task): accuracy over rotations, consistency, RStd and PriDe."""

    @property
    def empty(self) -> bool:
        return not self.positions.height


def robustness(scored: pl.DataFrame, seed: int = 0, calibration_share: float = CALIBRATION_SHARE) -> Robustness:
    empty = Robustness(pl.DataFrame(schema=POSITION_SCHEMA), pl.DataFrame(schema=BIAS_SCHEMA),
                       pl.DataFrame(schema=ROTATION_SCHEMA))
    if not scored.height or "gold_position" not in scored.columns:
        return empty
    rows = scored.filter(pl.col("gold_position").is_not_null())
    if not rows.height:
        return empty
    positions, bias, rotations = [], [], []
    for (model, task), group in rows.group_by(["model", "task"], maintain_order=True):
        names = position_names(group)
        rows_here = _position_rows(model, task, group, names)
        positions += rows_here
        bias.append(_bias_row(model, task, group, names, seed))
        if "rotation" in group.columns and group["rotation"].is_not_null().any():
            recalls = [r[6] for r in rows_here if not math.isnan(r[6])]
            rotations.append(_rotation_row(model, task, group, recalls, seed, calibration_share))
    return Robustness(pl.DataFrame(positions, schema=POSITION_SCHEMA, orient="row"),
                      pl.DataFrame(bias, schema=BIAS_SCHEMA, orient="row"),
                      pl.DataFrame(rotations, schema=ROTATION_SCHEMA, orient="row"))


def position_names(group: pl.DataFrame) -> list[str]:
    """Each position's name: its letter for lettered options; for labels, the label where their order is fixed, and
    '#1', '#2', ... (listed first, second) where rotations move them."""
    count = int(group["n_options"].max() or 0)  # type: ignore[arg-type]
    kind = group["kind"].drop_nulls()[0] if "kind" in group.columns and group["kind"].drop_nulls().len() else kinds.DEFAULT
    if kinds.get(kind).lettered and count <= len(string.ascii_uppercase):
        return list(string.ascii_uppercase[:count])
    rotated = "rotation" in group.columns and group["rotation"].is_not_null().any()
    keys = group["option_keys"].drop_nulls() if "option_keys" in group.columns else pl.Series([])
    if not rotated and keys.len() and len(keys[0]) == count:
        return [str(k) for k in keys[0]]
    return [f"#{i + 1}" for i in range(count)]


def _codes(series: pl.Series) -> list[int]:
    return series.drop_nulls().cast(pl.Int64).to_list()


def _position_rows(model: str, task: str, group: pl.DataFrame, names: list[str]) -> list[tuple]:
    """Shares of all answers (an invalid answer or an error is at no position), so a row's shares of the chosen
    positions sum to the share of readable answers."""
    answers, golds = group["answer_position"].to_numpy(), group["gold_position"].to_numpy()
    correct = group["correct"].cast(pl.Float64).fill_null(0.0).to_numpy() if "correct" in group.columns else None
    n = group.height
    rows = []
    for position, name in enumerate(names):
        at_gold = golds == position
        recall = float(correct[at_gold].mean()) if correct is not None and at_gold.any() else math.nan
        rows.append((model, task, position, name, float(np.sum(answers == position)) / n, float(at_gold.sum()) / n,
                     recall, n))
    return rows


def _bias_row(model: str, task: str, group: pl.DataFrame, names: list[str], seed: int) -> tuple:
    chosen, gold = _codes(group["answer_position"]), _codes(group["gold_position"])
    chi2, p = stats.homogeneity_test(chosen, gold, len(names), seed=seed)
    if not chosen:
        return (model, task, 0, None, math.nan, math.nan, chi2, p, False)
    counts = np.bincount(chosen, minlength=len(names))
    top = int(np.argmax(counts))
    gold_share = gold.count(top) / len(gold) if gold else math.nan
    return (model, task, len(chosen), names[top], float(counts[top]) / len(chosen), gold_share, chi2, p,
            bool(not math.isnan(p) and p < SIGNIFICANCE))


def _rotation_row(model: str, task: str, group: pl.DataFrame, recalls: list[float], seed: int, share: float) -> tuple:
    """`recalls`: the accuracy at each position where gold stands (the position rows'), for RStd."""
    frame = group.filter(pl.col("rotation").is_not_null())
    correct = pl.col("correct").cast(pl.Float64).fill_null(0.0)
    items = frame.group_by("example_id", maintain_order=True).agg(
        accuracy=correct.mean(),
        consistent=(pl.col("answer_original").is_not_null().all() & (pl.col("answer_original").n_unique() == 1)
                    & pl.col("error").is_null().all() & (pl.len() > 1)),
    )
    original = frame.filter(pl.col("rotation") == 0)
    rstd = float(np.std(recalls)) if recalls else math.nan
    first_order = _mean(original["correct"]) if original.height else math.nan
    rotations = int(frame["rotation"].cast(pl.Int64).to_numpy().max()) + 1
    return (model, task, rotations, items.height, _mean(items["accuracy"]), first_order, _mean(items["consistent"]),
            rstd, *pride_debias(frame, share, seed))


def _mean(values: pl.Series) -> float:
    return float(values.cast(pl.Float64).fill_null(0.0).to_numpy().mean())


def log_softmax(values: np.ndarray) -> np.ndarray:
    """Along the last axis."""
    shifted = values - values.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def pride_debias(frame: pl.DataFrame, share: float = CALIBRATION_SHARE,
                 seed: int = 0) -> tuple[int, float, float, float, str | None, str | None]:
    """PriDe (Zheng et al., 2024): the model's prior for each position, estimated from the rotations of a seeded
    `share` of the items (at least one of each number of options; the log-probabilities of each position averaged
    over an item's rotations cancel the options' contents, softmax gives the item's prior, and the items' priors are
    averaged), then taken out of every other item's answers: the answer is argmax(log P(position) - log prior(position)).

    Returns (held-out items scored, raw accuracy on them, debiased accuracy on them, gain, the calibration items'
    ids, the prior per option count); NaNs and None where loglik scores or items are lacking. Raw and debiased
    accuracy are over the same held-out items, every rotation of each, averaged per item."""
    nothing = (0, math.nan, math.nan, math.nan, None, None)
    if "option_logprobs" not in frame.columns:
        return nothing
    rows = frame.filter(pl.col("option_logprobs").is_not_null() & pl.col("error").is_null()
                        & pl.col("gold_position").is_not_null())
    rng = np.random.default_rng(seed)
    calibration: list[str] = []
    # Items with another number of options have another prior: each number gets its own calibration items.
    for same in sorted(rows.partition_by("n_options"), key=lambda part: int(part["n_options"][0])):
        items = sorted(set(same["example_id"].to_list()))
        if len(items) >= 2:
            count = min(len(items) - 1, max(1, round(share * len(items))))
            calibration += rng.choice(np.array(items, dtype=object), size=count, replace=False).tolist()
    calibration.sort()
    if not calibration:
        return nothing
    priors: dict[int, list[np.ndarray]] = {}
    for item, part in rows.filter(pl.col("example_id").is_in(calibration)).group_by("example_id"):
        scores = np.array(part["option_logprobs"].to_list(), dtype=float)
        averaged = log_softmax(scores).mean(axis=0)
        priors.setdefault(scores.shape[1], []).append(np.exp(log_softmax(averaged)))
    prior = {n: np.mean(found, axis=0) for n, found in priors.items()}
    held_out = rows.filter(~pl.col("example_id").is_in(calibration) & pl.col("n_options").is_in(list(prior)))
    if not held_out.height:
        return nothing
    raw, debiased = [], []
    for part in held_out.partition_by("example_id", maintain_order=True):
        scores = np.array(part["option_logprobs"].to_list(), dtype=float)
        gold = part["gold_position"].to_numpy()
        raw.append(float(np.mean(np.argmax(scores, axis=1) == gold)))
        shifted = log_softmax(scores) - np.log(prior[scores.shape[1]])
        debiased.append(float(np.mean(np.argmax(shifted, axis=1) == gold)))
    shown = "; ".join(f"{n} options: " + ", ".join(f"{p:.3f}" for p in prior[n]) for n in sorted(prior))
    raw_mean, debiased_mean = float(np.mean(raw)), float(np.mean(debiased))
    return (len(raw), raw_mean, debiased_mean, debiased_mean - raw_mean, ", ".join(map(str, calibration)), shown)
