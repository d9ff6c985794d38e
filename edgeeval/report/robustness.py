"""The report's section on whether the verdict holds: the option positions each model answered against gold's, the
chosen-letter test, rotations of the options (--permute: accuracy over rotations, consistency, RStd, PriDe), and, in
`edgeeval compare`, drift between runs of the same model (flips, agreement, KL divergence, verdicts)."""

from __future__ import annotations

from html import escape

import polars as pl

from edgeeval.report.html_parts import num, section, slug, table, td
from edgeeval.report.study import Study
from edgeeval.report.svg import Bar, bar_chart
from edgeeval.report.views import fmt, fmt_p
from edgeeval.scoring.robustness import BIAS_TEST

INTRO = ("Whether an answer is about the question or about where the options stand. For each multiple-choice and "
         "label task: the share of answers given at each position beside the share of gold there, and a test of "
         "whether a model's choices depart from gold's distribution beyond chance (" + BIAS_TEST + ").")
ROTATION_INTRO = ("Every item was asked under cyclic rotations of its options (--permute): the texts move, the letters "
                  "stay, gold moves with its text. Accuracy is averaged over the rotations (per item, then over items); "
                  "consistency is the share of items whose chosen option (by its text) is the same under every "
                  "rotation; RStd is the standard deviation, over the positions, of the accuracy on the items whose "
                  "gold stands there (Zheng et al., ICLR 2024); PriDe (loglik mode) estimates the model's prior for "
                  "each position from the rotations of a seeded 5% of the items (the calibration items, named) and "
                  "takes it out of the other items' answers: raw and debiased accuracy are both on those other items.")
DRIFT_INTRO = ("The same model in two runs (another quantization, machine or llama.cpp), answer by answer: flips from "
               "right to wrong and back with the exact McNemar p, the share of identical answers, and in loglik mode "
               "the KL divergence KL(first run ‖ other run) of the options' softmax distributions per answer (as "
               "Dutta et al., NeurIPS 2024, measure quantized models) and the share with the same best option.")


def distribution_text(positions: pl.DataFrame, model: str, task: str) -> str:
    """'A 0.20 (gold 0.22) · B ...': each position's share of the answers, gold's share beside it."""
    rows = positions.filter((pl.col("model") == model) & (pl.col("task") == task))
    return " · ".join(f"{r['name']} {fmt(r['chosen'], 2)} ({fmt(r['gold'], 2)})" for r in rows.iter_rows(named=True))


def flag_text(row: dict) -> str:
    if row["answers"] == 0:
        return "no readable answers"
    return "departs from gold's distribution" if row["flagged"] else "within chance"


def verdict_text(row: dict) -> str:
    return "holds" if row["holds"] else "CHANGES"


def has_robustness(study: Study) -> bool:
    """Whether the report has the section (for the page's navigation, without drawing it)."""
    return not study.robustness.empty or bool(study.drift.height) or bool(study.verdicts.height)


def robustness_section(study: Study) -> str:
    found = study.robustness
    parts = []
    if not found.empty:
        parts.append(f"<p>{escape(INTRO)}</p>")
        parts.append(table(
            [("model", False), ("task", False), ("readable answers", True), ("most chosen", False),
             ("its share of readable answers", True), ("gold's share there", True), ("chi-square", True), ("p", True), ("choices", False),
             ("share of all answers at each position (gold's)", False)],
            [[td(r["model"]), td(r["task"]), num(r["answers"], str(r["answers"])), td(r["top"] or "–"),
              num(r["top_share"]), num(r["gold_top_share"]), num(r["chi_square"], fmt(r["chi_square"], 2)),
              num(r["p_value"], fmt_p(r["p_value"])), td(flag_text(r), "flagged" if r["flagged"] else ""),
              td(distribution_text(found.positions, r["model"], r["task"]))] for r in found.bias.iter_rows(named=True)]))
    if found.rotations.height:
        parts.append(f"<h3>Rotations of the options</h3><p>{escape(ROTATION_INTRO)}</p>")
        parts.append(table(
            [("model", False), ("task", False), ("rotations", True), ("items", True), ("accuracy over rotations", True),
             ("accuracy, original order", True), ("consistency", True), ("RStd", True), ("PriDe items", True),
             ("raw", True), ("debiased", True), ("gain", True), ("calibration items", False)],
            [[td(r["model"]), td(r["task"]), num(r["rotations"], str(r["rotations"])), num(r["items"], str(r["items"])),
              num(r["accuracy"]), num(r["accuracy_original_order"]), num(r["consistency"]), num(r["rstd"]),
              num(r["pride_items"], str(r["pride_items"]) if r["pride_items"] else "–"), num(r["pride_raw"]),
              num(r["pride_debiased"]), num(r["pride_gain"]), td(r["calibration"] or "– (generate mode)")]
             for r in found.rotations.iter_rows(named=True)]))
        parts += [_position_plot(found.positions, r["model"], r["task"]) for r in found.rotations.iter_rows(named=True)]
    parts.append(_drift(study))
    body = "\n".join(p for p in parts if p)
    return section("robustness", "Option order and drift", body) if body else ""


def _position_plot(positions: pl.DataFrame, model: str, task: str) -> str:
    rows = positions.filter((pl.col("model") == model) & (pl.col("task") == task))
    nan = float("nan")
    groups = [(r["name"], [Bar(0, r["chosen"], nan, nan, f"{model}, {task}: {fmt(r['chosen'])} of the answers at {r['name']}"),
                           Bar(1, r["gold"], nan, nan, f"gold at {r['name']}: {fmt(r['gold'])}")])
              for r in rows.iter_rows(named=True)]
    return bar_chart(slug("positions", model, task), f"{model} · {task}: answers at each position",
                     f"For each option position, the share of {model}'s answers given there and the share of gold "
                     "there, over every rotation.", groups, ["answers given", "gold"], "share of the answers",
                     colours=["#0072B2", "#6b6b6b"])


def _drift(study: Study) -> str:
    parts = []
    if study.drift.height:
        parts.append(f"<h3>Drift between runs</h3><p>{escape(DRIFT_INTRO)}</p>")
        parts.append(table(
            [("model across runs", False), ("task", False), ("answers paired", True), ("right → wrong", True),
             ("wrong → right", True), ("McNemar p", True), ("accuracy before", True), ("after", True),
             ("agreement", True), ("KL mean", True), ("KL p95", True), ("KL max", True), ("same best option", True)],
            [[td(r["pair"]), td(r["task"]), num(r["n"], str(r["n"])), num(r["right_to_wrong"], _count(r["right_to_wrong"])),
              num(r["wrong_to_right"], _count(r["wrong_to_right"])), num(r["p_mcnemar"], fmt_p(r["p_mcnemar"])),
              num(r["accuracy_before"]), num(r["accuracy_after"]), num(r["agreement"]), num(r["kl_mean"], fmt(r["kl_mean"], 4)),
              num(r["kl_p95"], fmt(r["kl_p95"], 4)), num(r["kl_max"], fmt(r["kl_max"], 4)), num(r["same_top"])]
             for r in study.drift.iter_rows(named=True)]))
    if study.verdicts.height:
        changed = study.verdicts.filter(~pl.col("holds")).height
        parts.append(f"<h3>Does each verdict hold?</h3><p>{escape(verdict_summary(study.verdicts))} A verdict holds when "
                     "the delta has the same sign and is significant (p Holm &lt; 0.05) in both runs or in neither.</p>"
                     if changed else f"<h3>Does each verdict hold?</h3><p>{escape(verdict_summary(study.verdicts))}</p>")
        parts.append(table(
            [("pair", False), ("task", False), ("metric", False), ("runs", False), ("delta", True), ("delta, other run", True),
             ("p (Holm)", True), ("p (Holm), other run", True), ("verdict", False)],
            [[td(r["pair"]), td(r["task"]), td(r["metric"]), td(f"{r['first_run']} → {r['other_run']}"), num(r["delta_first"]),
              num(r["delta_other"]), num(r["p_holm_first"], fmt_p(r["p_holm_first"])),
              num(r["p_holm_other"], fmt_p(r["p_holm_other"])), td(verdict_text(r), "" if r["holds"] else "flagged")]
             for r in study.verdicts.iter_rows(named=True)]))
    return "\n".join(parts)


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def verdict_summary(verdicts: pl.DataFrame) -> str:
    changed = verdicts.filter(~pl.col("holds"))
    if not changed.height:
        return f"Every verdict holds between the runs ({verdicts.height} compared)."
    listed = "; ".join(f"{r['pair']}, {r['task']}, {r['metric']}" for r in changed.iter_rows(named=True))
    return f"The verdict changes between the runs in {changed.height} of {verdicts.height}: {listed}."
