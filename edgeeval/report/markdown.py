"""report.md: the study as Markdown tables, for terminals and version control."""

from __future__ import annotations

import polars as pl

from edgeeval.report.findings import headline, significant_findings, tally_pair, verdict
from edgeeval.report.published import INTRO as PUBLISHED_INTRO
from edgeeval.report.published import direction_rows, direction_text, inside_text, no_rows_note, published_rows
from edgeeval.report.retrieval import INTRO as RETRIEVAL_INTRO
from edgeeval.report.retrieval import retrieval_rows, sources_text
from edgeeval.report.robustness import (DRIFT_INTRO, INTRO, ROTATION_INTRO, distribution_text, flag_text,
                                        verdict_summary, verdict_text)
from edgeeval.report.study import Study
from edgeeval.report.views import (arm_with_family, arrangement, repetition_note, arms_with_results, confusion_table, disagreements,
                                   discordant_counts, fmt, fmt_ci, fmt_p, model_facts, pair_rows, plain_results,
                                   run_facts, side_names, task_scoring, tasks_in)

DRILL_LIMIT = 5
"""Disagreements listed per task; report.html lists more, records.parquet all."""
READING_NOTE = (
    "Accuracy and the other quality scores count engine errors and unreadable answers as wrong; "
    "invalid_rate counts answers from which no answer could be read, error_rate engine failures (native "
    "crash, prompt too long), hallucination_rate answers naming an option or code that does not exist. "
    "CIs are 95% bootstrap intervals (paired by example for deltas). p-values are exact McNemar tests for "
    "per-example yes/no metrics and paired permutation tests otherwise, Holm-adjusted per metric across the "
    "tasks of each pair; a verdict needs Holm-adjusted p < 0.05."
)


def render_markdown(study: Study) -> str:
    lines = [f"# {study.title}", ""]
    for pair in study.pairs:
        rows = pair_rows(study, pair)
        lines.append(f"- **{pair.name}**: {significant_findings(rows, *side_names(study, pair))} "
                     + headline(arm_with_family(study, pair.candidate), arm_with_family(study, pair.baseline),
                                tally_pair(rows)))
    lines += [f"- note: {note}" for note in study.notes]
    lines += _runs(study) + _models(study) + _tasks(study)
    for pair in study.pairs:
        lines += _pair_summary(study, pair)
    if not study.pairs:
        lines += ["", "## Paired comparison", "", "No pair has records for both models yet."]
    lines += _per_task(study) + _robustness(study) + _published(study) + _retrieval(study) + _disagreements(study)
    lines += ["", "## How to read this report", "", READING_NOTE, ""]
    return "\n".join(lines)


def _published(study: Study) -> list[str]:
    rows, directions = published_rows(study), direction_rows(study)
    lines = ["", "## Against the published study", "", PUBLISHED_INTRO, ""]
    if not rows:
        return lines + [no_rows_note(study)]
    lines += _table(["task", "metric", "model", "published as", "published", "this run [95% CI]", "published inside CI"],
                    [[r.task, r.metric, r.arm, r.reference, fmt(r.published), fmt_ci(r.value, r.ci_low, r.ci_high),
                      inside_text(r)] for r in rows])
    if directions:
        lines += ["", "Each pair's difference (candidate − baseline), published and here:", ""] + _table(
            ["pair", "task", "metric", "published delta", "delta here [95% CI]", "p (Holm)", "direction"],
            [[r.pair, r.task, r.metric, fmt(r.published_delta), fmt_ci(r.delta, r.ci_low, r.ci_high), fmt_p(r.p_holm),
              direction_text(r)] for r in directions])
    return lines


def _retrieval(study: Study) -> list[str]:
    rows = retrieval_rows(study)
    if not rows:
        return []
    return ["", "## Retrieval", "", RETRIEVAL_INTRO, ""] + _table(
        ["arm", "task", "items", "passages per item", "passage tokens per item (est.)", "best passage from",
         "leakage guard"],
        [[r.arm, r.task, str(r.items), fmt(r.mean_passages, 2), fmt(r.mean_passage_tokens, 0), sources_text(r),
          r.leak_note] for r in rows])


def _robustness(study: Study) -> list[str]:
    found, lines = study.robustness, []
    if not found.empty:
        lines += ["", "## Option order and drift", "", INTRO, ""] + _table(
            ["model", "task", "readable answers", "most chosen", "its share of readable answers", "gold's share there",
             "chi-square", "p", "choices", "share of all answers at each position (gold's)"],
            [[r["model"], r["task"], str(r["answers"]), r["top"] or "–", fmt(r["top_share"]), fmt(r["gold_top_share"]),
              fmt(r["chi_square"], 2), fmt_p(r["p_value"]), flag_text(r), distribution_text(found.positions, r["model"], r["task"])]
             for r in found.bias.iter_rows(named=True)])
    if found.rotations.height:
        lines += ["", "### Rotations of the options", "", ROTATION_INTRO, ""] + _table(
            ["model", "task", "rotations", "items", "accuracy over rotations", "accuracy, original order", "consistency",
             "RStd", "PriDe items", "raw", "debiased", "gain", "calibration items"],
            [[r["model"], r["task"], str(r["rotations"]), str(r["items"]), fmt(r["accuracy"]),
              fmt(r["accuracy_original_order"]), fmt(r["consistency"]), fmt(r["rstd"]), str(r["pride_items"] or "–"),
              fmt(r["pride_raw"]), fmt(r["pride_debiased"]), fmt(r["pride_gain"]), r["calibration"] or "– (generate mode)"]
             for r in found.rotations.iter_rows(named=True)])
    if study.drift.height:
        lines += ["", "### Drift between runs", "", DRIFT_INTRO, ""] + _table(
            ["model across runs", "task", "answers paired", "right → wrong", "wrong → right", "McNemar p",
             "accuracy before", "after", "agreement", "KL mean", "KL p95", "KL max", "same best option"],
            [[r["pair"], r["task"], str(r["n"]), str(r["right_to_wrong"] if r["right_to_wrong"] is not None else "–"),
              str(r["wrong_to_right"] if r["wrong_to_right"] is not None else "–"), fmt_p(r["p_mcnemar"]),
              fmt(r["accuracy_before"]), fmt(r["accuracy_after"]), fmt(r["agreement"]), fmt(r["kl_mean"], 4),
              fmt(r["kl_p95"], 4), fmt(r["kl_max"], 4), fmt(r["same_top"])] for r in study.drift.iter_rows(named=True)])
    if study.verdicts.height:
        lines += ["", "### Does each verdict hold?", "", verdict_summary(study.verdicts), ""] + _table(
            ["pair", "task", "metric", "runs", "delta", "delta, other run", "p (Holm)", "p (Holm), other run", "verdict"],
            [[r["pair"], r["task"], r["metric"], f"{r['first_run']} → {r['other_run']}", fmt(r["delta_first"]),
              fmt(r["delta_other"]), fmt_p(r["p_holm_first"]), fmt_p(r["p_holm_other"]), verdict_text(r)]
             for r in study.verdicts.iter_rows(named=True)])
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def _cell(value) -> str:
    """One table cell: record text must not end the cell or the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _runs(study: Study) -> list[str]:
    facts = [run_facts(run) for run in study.runs]
    header = ["run"] + list(facts[0]) if facts else ["run"]
    return ["", "## Runs", ""] + _table(header, [[run.name, *f.values()] for run, f in zip(study.runs, facts)])


def _models(study: Study) -> list[str]:
    rows = []
    for label, arm in study.arms.items():
        facts = model_facts(arm.meta)
        facts["sha256"] = f"`{facts['sha256']}`"
        rows.append([label, *facts.values()])
    header = ["model", *model_facts({})]
    return ["", "## Models", ""] + _table(header, rows)


def _tasks(study: Study) -> list[str]:
    rows = [[name, t.get("kind", "–"), task_scoring(t), f"{t.get('examples', '–')}{arrangement(t)}",
             f"`{str(t.get('data', '')).rsplit('/', 1)[-1]}`", f"`{t.get('hash', '–')}`"] for name, t in study.tasks.items()]
    return ["", "## Tasks", ""] + _table(["task", "kind", "answers", "examples", "data", "task hash"], rows)


def _pair_summary(study: Study, pair) -> list[str]:
    base_name, cand_name = side_names(study, pair)
    rows = [[r["task"], r["metric"], fmt(r["baseline"]), fmt(r["candidate"]),
             fmt_ci(r["delta"], r["ci_low"], r["ci_high"]), fmt_p(r["p_holm"]), r["n_paired"],
             verdict(r, base_name, cand_name)]
            for r in pair_rows(study, pair).iter_rows(named=True)]
    return ["", f"## Paired comparison: {pair.name} — {base_name} vs {cand_name}", "",
            f"Baseline **{pair.baseline}** vs candidate **{pair.candidate}**; delta = candidate − baseline.", ""
            ] + _table(["task", "metric", base_name, cand_name, "delta [95% CI]", "p (Holm)", "n", "verdict"], rows)


def _per_task(study: Study) -> list[str]:
    lines = ["", "## Results by task"]
    arms = arms_with_results(study)
    for task in tasks_in(study):
        results = plain_results(study.results).filter(pl.col("task") == task)
        meta = study.tasks.get(task, {})
        lines += ["", f"### {task}", "", f"{meta.get('kind', '–')}, {meta.get('examples', '–')} examples.", ""]
        values = {(r["model"], r["metric"]): r for r in results.iter_rows(named=True)}
        metrics = results["metric"].unique(maintain_order=True).to_list()
        rows = [[m] + [fmt_ci(values[(a, m)]["value"], values[(a, m)]["ci_low"], values[(a, m)]["ci_high"])
                       if (a, m) in values else "–" for a in arms] for m in metrics]
        lines += _table(["metric", *arms], rows)
        lines += _repetitions(study, task)
        lines += [line for arm in arms for line in _confusion(study, arm, task)]
        paired = study.comparison.filter(pl.col("task") == task)
        if paired.height:
            lines += [""] + _table(
                ["pair", "metric", "delta [95% CI]", "p", "p (Holm)", "test", "discordant (b / c)", "verdict"],
                [[r["pair"], r["metric"], fmt_ci(r["delta"], r["ci_low"], r["ci_high"]), fmt_p(r["p_value"]),
                  fmt_p(r["p_holm"]), r["test"], discordant_counts(r), verdict(r)] for r in paired.iter_rows(named=True)])
    return lines


def _repetitions(study: Study, task: str) -> list[str]:
    rows = study.repetitions.filter(pl.col("task") == task)
    if not rows.height:
        return []
    return ["", repetition_note(study, task, rows['repeats'][0]), ""] + _table(
        ["metric", "model", "mean", "sd", "min", "max"],
        [[r["metric"], r["model"], fmt(r["mean"]), fmt(r["sd"]), fmt(r["min"]), fmt(r["max"])]
         for r in rows.iter_rows(named=True)])


def _confusion(study: Study, arm: str, task: str) -> list[str]:
    golds, answers, cells = confusion_table(study.results, arm, task)
    if not cells:
        return []
    rows = [[gold] + [fmt(cells.get((gold, a)), 2) for a in answers] for gold in golds]
    return ["", f"{arm}: answers given (columns) per gold answer (rows), as shares of the row", ""] + _table(
        ["gold ↓ answer →", *answers], rows)


def _disagreements(study: Study) -> list[str]:
    lines = []
    for pair in study.pairs:
        found = disagreements(study.scored, pair.baseline, pair.candidate)
        if not found.height:
            continue
        lines += ["", f"## Where {pair.baseline} and {pair.candidate} disagree ({found.height} examples)", "",
                  f"The first {DRILL_LIMIT} of each task, discordant ones (one right, one wrong) first; report.html "
                  "lists them all with prompts and answers.", ""]
        rows = []
        for (task,), group in found.group_by("task", maintain_order=True):
            rows += [[task, r["example_id"], _clip(str(r.get("gold", "–"))), _answer(r, ""), _answer(r, "_c")]
                     for r in group.head(DRILL_LIMIT).iter_rows(named=True)]
            if group.height > DRILL_LIMIT:
                rows.append([task, f"… {group.height - DRILL_LIMIT} more", "", "", ""])
        lines += _table(["task", "example", "gold", "baseline answer", "candidate answer"], rows)
    return lines


def _answer(row: dict, suffix: str) -> str:
    if row.get(f"error{suffix}"):
        return f"error ({row[f'error_kind{suffix}']})"
    if row.get("score_metric"):
        return f"{row['score_metric']} {fmt(row.get(f'score{suffix}'))}"
    answer = row.get(f"parsed{suffix}") or "invalid"
    return f"{_clip(answer)}{' ✓' if row.get(f'correct{suffix}') else ''}"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
