"""report.md: the study as Markdown tables, for terminals and version control."""

from __future__ import annotations

import polars as pl

from edgeeval.report.findings import headline, significant_findings, tally_pair, verdict
from edgeeval.report.published import INTRO as PUBLISHED_INTRO
from edgeeval.report.published import direction_rows, direction_text, inside_text, no_rows_note, published_rows
from edgeeval.report.retrieval import INTRO as RETRIEVAL_INTRO
from edgeeval.report.retrieval import retrieval_rows, sources_text
from edgeeval.report.study import Study
from edgeeval.report.views import (arm_with_family, arms_with_results, confusion_table, disagreements,
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
    lines += _per_task(study) + _published(study) + _retrieval(study) + _disagreements(study)
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
    rows = [[name, t.get("kind", "–"), task_scoring(t), t.get("examples", "–"),
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
    return ["", f"Each item was asked {rows['repeats'][0]} times; the figures above are per-item means. Across "
            "the repetitions, each computed on its own:", ""] + _table(
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
