"""report.html: one self-contained page (inline CSS, SVG and a few lines of script; nothing is
loaded from anywhere) showing the study's message, its numbers, and the examples behind them."""

from __future__ import annotations

import base64
import hashlib
import math
from html import escape

import polars as pl

from edgeeval.report.assets import CSS, SCRIPT
from edgeeval.report.findings import (favours, headline, is_hallucination_measure, quality_metric, significant_findings,
                                      tally_pair, verdict)
from edgeeval.report.html_parts import minus, num, section, slug, table, td
from edgeeval.report.published import INTRO as PUBLISHED_INTRO
from edgeeval.report.published import direction_rows, direction_text, inside_text, no_rows_note, published_rows
from edgeeval.report.retrieval import INTRO as RETRIEVAL_INTRO
from edgeeval.report.retrieval import retrieval_rows, sources_text
from edgeeval.report.robustness import has_robustness, robustness_section
from edgeeval.report.study import ArmPair, Study
from edgeeval.report.svg import (ARM_COLOURS, FAVOURS_BASELINE, FAVOURS_CANDIDATE, NO_DIFFERENCE, Bar, ForestRow,
                                 bar_chart, forest_plot)
from edgeeval.report.views import (arm_with_family, arms_with_results, arrangement, confusion_table, disagreements, fmt, fmt_ci,
                                   fmt_p, metric_label, model_facts, pair_rows, plain_results, repetition_note, run_facts,
                                   side_names, task_scoring, tasks_in)

DRILL_LIMIT = 300
"""Disagreements shown per pair and task (discordant ones first); records.parquet has them all."""
SUMMARY_CHARS = 48
"""Longer gold and parsed answers (summaries) are cut short in an example's one-line summary."""
PROMPT_CHARS = 6000
"""Longer prompts are shown shortened in the drill-down."""


def render_html(study: Study) -> str:
    sections = [_findings(study), _forest_plots(study), _headline_tables(study), _model_bars(study),
                _task_sections(study), robustness_section(study), _published(study), _retrieval(study),
                _drill_down(study), _run_summary(study),
                _reading_notes()]
    return _page(study, "\n".join(sections))


def _page(study: Study, body: str) -> str:
    # The policy forbids every load and allows only this page's own style and script, so even a
    # mistake in escaping could neither fetch anything nor run injected code.
    policy = (f"default-src 'none'; style-src '{_digest(CSS)}'; script-src '{_digest(SCRIPT)}'; "
              "img-src 'none'; base-uri 'none'; form-action 'none'")
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in (
        ("findings", "Findings"), ("forest", "Forest plot"), ("comparison", "Paired comparison"),
        ("models", "Per model"), ("tasks", "Per task"), ("published", "Published"),
        *((("robustness", "Option order"),) if has_robustness(study) else ()),
        *((("retrieval", "Retrieval"),) if retrieval_rows(study) else ()),
        ("disagreements", "Disagreements"), ("run", "Run"),
        ("method", "Method")))
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{escape(study.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<header class="top"><h1>{escape(study.title)}</h1><p>{escape(_subtitle(study))}</p>'
        f"<nav>{nav}</nav></header>\n<main>\n{body}\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _subtitle(study: Study) -> str:
    arms = ", ".join(f"{label} ({', '.join(filter(None, (arm.meta.get('family'), arm.meta.get('quantization'))))})"
                     for label, arm in study.arms.items())
    facts = [run_facts(run) for run in study.runs]
    finished = ", ".join(f["finished"] for f in facts)
    versions = ", ".join(sorted({f"edgeeval {f['edgeeval']}" for f in facts}))
    return f"{arms} · {len(tasks_in(study))} task(s) · finished {finished} · {versions}"


def _discordant_cell(row: dict, href: str) -> str:
    """b / c linking to the examples; '–' for tests without discordant counts."""
    if row.get("b") is None or row.get("c") is None:
        return f'<td class="num" data-v=""><a href="{escape(href)}">–</a></td>'
    return f'<td class="num" data-v="{row["b"] + row["c"]}"><a href="{escape(href)}">{row["b"]} / {row["c"]}</a></td>'


def _verdict_cell(row: dict, base: str, cand: str) -> str:
    side = favours(row)
    cls = {"candidate": "favours-candidate", "baseline": "favours-baseline"}.get(side or "", "no-difference")
    return f'<td class="verdict {cls}">{escape(verdict(row, base, cand))}</td>'


# --- sections ---------------------------------------------------------------------------------


def _findings(study: Study) -> str:
    cards = []
    for pair in study.pairs:
        rows = pair_rows(study, pair)
        message = significant_findings(rows, *side_names(study, pair))
        tally = headline(arm_with_family(study, pair.candidate), arm_with_family(study, pair.baseline), tally_pair(rows))
        cards.append(f'<div class="finding"><h3>{escape(pair.name)}</h3>'
                     f'<p class="message"><strong>{escape(message)}</strong></p><p>{escape(tally)}</p>'
                     f"{_scoreboard(study, pair, rows)}</div>")
    if not study.pairs:
        cards.append("<p>No pair has records for both models yet.</p>")
    cards += [f'<p class="note-box">{escape(note)}</p>' for note in study.notes]
    privacy = ("This report contains prompt and answer text from the records, which may include patient "
               "data: share it only where the records may go." if study.has_text else
               "This report contains no prompt or answer text (written with --no-text): only example ids, "
               "gold labels, parsed answers and whether they were correct.")
    cards.append(f'<p class="privacy">{escape(privacy)} This file loads nothing from anywhere: no scripts, '
                 "fonts or images from outside, enforced by its Content-Security-Policy.</p>")
    return section("findings", "Findings", "\n".join(cards))


def _scoreboard(study: Study, pair: ArmPair, rows: pl.DataFrame) -> str:
    """One tile per task: the headline quality metric's difference, coloured by who it favours."""
    base, cand = side_names(study, pair)
    tiles = []
    for (task,), task_rows in rows.group_by("task", maintain_order=True):
        metric = quality_metric(task_rows)
        if metric is None:
            continue
        r = task_rows.filter(pl.col("metric") == metric).row(0, named=True)
        if math.isnan(r["delta"]):
            continue
        cls = {"candidate": "favours-candidate", "baseline": "favours-baseline"}.get(favours(r) or "", "no-difference")
        arrow = "▲" if r["delta"] > 0 else "▼" if r["delta"] < 0 else "="
        tiles.append(f'<li class="{cls}"><a href="#{slug("task", task)}"><span aria-hidden="true">{arrow}</span> '
                     f"{escape(task)}<br><small>{escape(metric)} {escape(minus(fmt(r['delta'])))}, "
                     f"p (Holm) {escape(fmt_p(r['p_holm']))}: {escape(verdict(r, base, cand))}</small></a></li>")
    return f'<ul class="scoreboard">{"".join(tiles)}</ul>' if tiles else ""


def _run_summary(study: Study) -> str:
    facts = [run_facts(run) for run in study.runs]
    labels = list(facts[0]) if facts else []
    runs = table([("", False)] + [(run.name, False) for run in study.runs],
                  [[f'<th scope="row">{escape(label)}</th>'] + [td(f[label], "mono" if label == "llama.cpp" else "")
                                                                for f in facts] for label in labels], cls="facts")
    model_labels = list(model_facts({}))
    models = table([("model", False)] + [(label, label == "size (MB)") for label in model_labels],
                    [[td(arm)] + [td(value, "mono hash" if key == "sha256" else ("num" if key == "size (MB)" else ""))
                                   for key, value in model_facts(meta.meta).items()]
                     for arm, meta in study.arms.items()])
    tasks = table([("task", False), ("kind", False), ("answers", False), ("examples", True), ("metrics", False),
                    ("data", False), ("data sha256", False), ("task hash", False)],
                   [[td(name), td(t.get("kind", "–")), td(task_scoring(t)), num(t.get("examples")),
                     td(", ".join(t.get("metrics", []))), td(str(t.get("data", "")).rsplit("/", 1)[-1], "mono"),
                     td(t.get("data_sha256", "–"), "mono hash"), td(t.get("hash", "–"), "mono")]
                    for name, t in study.tasks.items()])
    return section("run", "Run: models, machine, versions", f"{runs}\n<h3>Models</h3>\n{models}\n"
                                                           f"<h3>Tasks</h3>\n{tasks}")


def _headline_tables(study: Study) -> str:
    parts = []
    for pair in study.pairs:
        base, cand = side_names(study, pair)
        rows = []
        for r in pair_rows(study, pair).iter_rows(named=True):
            drill = f"#{slug('dis', pair.name, r['task'])}"
            rows.append([
                f'<td><a href="#{slug("task", r["task"])}">{escape(r["task"])}</a></td>', td(r["metric"]),
                _verdict_cell(r, base, cand), num(r["baseline"]), num(r["candidate"]),
                num(r["delta"], fmt_ci(r["delta"], r["ci_low"], r["ci_high"])), num(r["p_value"], fmt_p(r["p_value"])),
                num(r["p_holm"], fmt_p(r["p_holm"])), num(r["n_paired"]), _discordant_cell(r, drill)])
        header = [("task", False), ("metric", False), ("verdict", False), (base, True), (cand, True),
                  ("delta [95% CI]", True), ("p", True), ("p (Holm)", True), ("n", True), ("b / c", True)]
        parts.append(f"<h3>{escape(pair.name)}: {escape(base)} vs {escape(cand)}</h3>\n"
                     f"<p>Baseline <strong>{escape(pair.baseline)}</strong> vs candidate "
                     f"<strong>{escape(pair.candidate)}</strong>; delta = candidate − baseline; b / c = discordant "
                     "examples (only the baseline / only the candidate has it right, or invalid). Click a column "
                     "heading to sort, a task for its details, b / c for its examples.</p>\n"
                     + table(header, rows))
    return section("comparison", "Paired comparison", "\n".join(parts) or "<p>No paired results.</p>")


def _forest_plots(study: Study) -> str:
    parts = []
    for index, pair in enumerate(study.pairs):
        base, cand = side_names(study, pair)
        rows = [_forest_row(r, base, cand) for r in _ordered(pair_rows(study, pair)).iter_rows(named=True)]
        if not rows:
            continue
        title = f"{pair.name}: {cand} − {base}, paired difference with 95% CI"
        description = (f"One row per task and metric: the point is the difference {cand} minus {base} on the "
                       "same examples, the line its 95% paired bootstrap confidence interval; the dashed line is no difference.")
        parts.append("<figure>" + forest_plot(f"forest-{index}", title, description, rows,
                                              f"difference, {cand} − {base}", f"{base} higher", f"{cand} higher",
                                              "difference [95% CI] · p (Holm)")
                     + _forest_legend(base, cand) + "</figure>")
    return section("forest", "Forest plot of paired differences", "\n".join(parts) or "<p>No paired results.</p>")


def _ordered(rows: pl.DataFrame) -> pl.DataFrame:
    """Quality metrics first, then the failure measures; tasks in their order within each."""
    metrics = rows["metric"].unique(maintain_order=True).to_list()
    order = sorted(metrics, key=lambda m: (is_hallucination_measure(m), metrics.index(m)))
    return rows.with_columns(rank=pl.col("metric").replace_strict(order, list(range(len(order))))).sort(
        "rank", maintain_order=True).drop("rank")


def _forest_row(r: dict, base: str, cand: str) -> ForestRow:
    side = favours(r)
    colour = {"candidate": FAVOURS_CANDIDATE, "baseline": FAVOURS_BASELINE}.get(side or "", NO_DIFFERENCE)
    note = (f"{fmt(r['delta'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] · {fmt_p(r['p_holm'])}"
            if not math.isnan(r["delta"]) else "no paired examples")
    tooltip = (f"{r['task']}, {r['metric']}: {base} {fmt(r['baseline'])}, {cand} {fmt(r['candidate'])}, "
               f"difference {note}; n = {r['n_paired']}; {verdict(r, base, cand)}")
    return ForestRow(metric_label(r["metric"]), r["task"], r["delta"], r["ci_low"], r["ci_high"],
                     minus(note), colour, side is not None, tooltip, f"#{slug('task', r['task'])}")


def _forest_legend(base: str, cand: str) -> str:
    items = [("favours-candidate", f"favours {cand} (Holm-adjusted p < 0.05)"),
             ("favours-baseline", f"favours {base} (Holm-adjusted p < 0.05)"),
             ("no-difference", "no significant difference (hollow point)")]
    spans = "".join(f'<span><span class="swatch {cls}"></span>{escape(text)}</span>' for cls, text in items)
    return (f'<figcaption><div class="legend">{spans}</div>For measures where lower is better (invalid answers, '
            "errors, hallucinations) a difference below zero favours the candidate.</figcaption>")


def _model_bars(study: Study) -> str:
    arms = arms_with_results(study)
    if not arms:
        return section("models", "Per-model results", "<p>No results yet.</p>")
    metrics = plain_results(study.results)["metric"].unique(maintain_order=True).to_list()
    quality = [m for m in metrics if not is_hallucination_measure(m)]
    failures = [m for m in metrics if is_hallucination_measure(m)]
    parts = ["<p>Each bar is one model's score on one task with its 95% bootstrap interval.</p>"]
    for heading, group in (("Accuracy and other quality scores (higher is better)", quality),
                           ("Hallucination and failure measures (lower is better)", failures)):
        if group:
            parts.append(f"<h3>{escape(heading)}</h3>")
            parts += [f"<figure>{_metric_chart(study, metric, arms)}</figure>" for metric in group]
    return section("models", "Per-model results", "\n".join(parts))


def _metric_chart(study: Study, metric: str, arms: list[str]) -> str:
    rows = study.results.filter(pl.col("metric") == metric)
    values = {(r["model"], r["task"]): r for r in rows.iter_rows(named=True)}
    groups = []
    for task in tasks_in(study):
        bars = [_bar(values[(arm, task)], index, f"{arm}, {task}, {metric}")
                for index, arm in enumerate(arms) if (arm, task) in values]
        if bars:
            groups.append((task, bars))
    description = f"{metric} of each model on each task, with 95% bootstrap confidence intervals."
    return bar_chart(slug("bars", metric), f"{metric} by task", description, groups, arms, metric,
                     [ARM_COLOURS[i % len(ARM_COLOURS)] for i in range(len(arms))])


def _bar(row: dict, series: int, what: str) -> Bar:
    return Bar(series, row["value"], row["ci_low"], row["ci_high"],
               f"{what}: {fmt_ci(row['value'], row['ci_low'], row['ci_high'])}, n = {row['n']}")


def _task_sections(study: Study) -> str:
    arms = arms_with_results(study)
    parts = []
    for task in tasks_in(study):
        meta = study.tasks.get(task, {})
        results = plain_results(study.results).filter(pl.col("task") == task)
        values = {(r["model"], r["metric"]): r for r in results.iter_rows(named=True)}
        metrics = results["metric"].unique(maintain_order=True).to_list()
        shown = table([("metric", False)] + [(f"{arm} [95% CI]", True) for arm in arms],
                       [[td(m)] + [_result_cell(values.get((a, m))) for a in arms] for m in metrics])
        shown += _repetitions(study, task) + "".join(_confusion(study, arm, task) for arm in arms)
        parts.append(f'<article id="{slug("task", task)}"><h3>{escape(task)}</h3>'
                     f'<p class="task-meta">{escape(meta.get("kind", "–"))}, {escape(str(meta.get("examples", "–")))} '
                     f'examples{escape(arrangement(meta))}, task hash <span class="mono">{escape(str(meta.get("hash", "–")))}</span></p>'
                     f"{shown}{_task_pairs(study, task)}</article>")
    return section("tasks", "Per task", "\n".join(parts) or "<p>No tasks.</p>")


def _repetitions(study: Study, task: str) -> str:
    rows = study.repetitions.filter(pl.col("task") == task)
    if not rows.height:
        return ""
    note = f"<p>{escape(repetition_note(study, task, rows['repeats'][0]))}</p>"
    return note + table([("metric", False), ("model", False), ("mean", True), ("sd", True), ("min", True),
                          ("max", True)],
                         [[td(r["metric"]), td(r["model"]), num(r["mean"]), num(r["sd"]), num(r["min"]),
                           num(r["max"])] for r in rows.iter_rows(named=True)])


def _confusion(study: Study, arm: str, task: str) -> str:
    golds, answers, cells = confusion_table(study.results, arm, task)
    if not cells:
        return ""
    rows = [[f'<th scope="row">{escape(gold)}</th>'] + [_heat_cell(cells.get((gold, a))) for a in answers]
            for gold in golds]
    return (f"<h4>{escape(arm)}: answers given (columns) per gold answer (rows), as shares of the row</h4>"
            + table([("gold ↓ answer →", False)] + [(a, True) for a in answers], rows, cls="confusion"))


def _heat_cell(share: float | None) -> str:
    """A share shaded in five steps, so the table reads as a picture (classes: the page allows no inline style)."""
    if share is None or math.isnan(share):
        return td("–", "num")
    return f'<td class="num heat-{round(share * 5)}" data-v="{share!r}">{escape(fmt(share, 2))}</td>'


def _result_cell(row: dict | None) -> str:
    if row is None:
        return td("–", "num")
    return num(row["value"], fmt_ci(row["value"], row["ci_low"], row["ci_high"]))


def _task_pairs(study: Study, task: str) -> str:
    rows = []
    for pair in study.pairs:
        base, cand = side_names(study, pair)
        for r in pair_rows(study, pair).filter(pl.col("task") == task).iter_rows(named=True):
            rows.append([td(pair.name), td(r["metric"]),
                         num(r["delta"], fmt_ci(r["delta"], r["ci_low"], r["ci_high"])),
                         num(r["p_value"], fmt_p(r["p_value"])), num(r["p_holm"], fmt_p(r["p_holm"])),
                         td(r["test"]), _discordant_cell(r, f'#{slug("dis", pair.name, task)}'),
                         _verdict_cell(r, base, cand)])
    if not rows:
        return ""
    return table([("pair", False), ("metric", False), ("delta [95% CI]", True), ("p", True), ("p (Holm)", True),
                   ("test", False), ("b / c", True), ("verdict", False)], rows)


def _published(study: Study) -> str:
    rows, directions = published_rows(study), direction_rows(study)
    if not rows:
        return section("published", "Against the published study",
                        f"<p>{escape(PUBLISHED_INTRO)}</p><p>{escape(no_rows_note(study))}</p>")
    shown = table([("task", False), ("metric", False), ("model", False), ("published as", False), ("published", True),
                    ("this run [95% CI]", True), ("published inside CI", False)],
                   [[td(r.task), td(r.metric), td(r.arm), td(r.reference), num(r.published, fmt(r.published)),
                     num(r.value, fmt_ci(r.value, r.ci_low, r.ci_high)), td(inside_text(r))] for r in rows])
    if directions:
        shown += "<p>Each pair's difference (candidate − baseline), published and here:</p>" + table(
            [("pair", False), ("task", False), ("metric", False), ("published delta", True),
             ("delta here [95% CI]", True), ("p (Holm)", True), ("direction", False)],
            [[td(r.pair), td(r.task), td(r.metric), num(r.published_delta, fmt(r.published_delta)),
              num(r.delta, fmt_ci(r.delta, r.ci_low, r.ci_high)), num(r.p_holm, fmt_p(r.p_holm)),
              td(direction_text(r))] for r in directions])
    return section("published", "Against the published study", f"<p>{escape(PUBLISHED_INTRO)}</p>{shown}")


def _retrieval(study: Study) -> str:
    rows = retrieval_rows(study)
    if not rows:
        return ""
    shown = table([("arm", False), ("task", False), ("items", True), ("passages per item", True),
                    ("passage tokens per item (est.)", True), ("best passage from", False), ("leakage guard", False)],
                   [[td(r.arm), td(r.task), num(r.items, str(r.items)), num(r.mean_passages, fmt(r.mean_passages, 2)),
                     num(r.mean_passage_tokens, fmt(r.mean_passage_tokens, 0)), td(sources_text(r)), td(r.leak_note)]
                    for r in rows])
    return section("retrieval", "Retrieval", f"<p>{escape(RETRIEVAL_INTRO)}</p>{shown}")


def _drill_down(study: Study) -> str:
    intro = ("<p>Examples where the two models of a pair give different answers, discordant ones (one right, "
             "one wrong: those McNemar's test counts) first. Open one to see "
             + ("the prompt, both answers, the gold and the parsed answers." if study.has_text else
                "its ids and parsed answers; prompt and answer text were left out (--no-text).") + "</p>"
             '<div class="search"><label for="drill-search">Find example id</label>'
             '<input id="drill-search" type="search" placeholder="e.g. cc-001" autocomplete="off">'
             '<span id="drill-count" aria-live="polite"></span></div>')
    parts = [intro]
    for pair in study.pairs:
        found = disagreements(study.scored, pair.baseline, pair.candidate)
        parts.append(f"<h3>{escape(pair.name)}: {escape(pair.baseline)} vs {escape(pair.candidate)} "
                     f"({found.height} examples)</h3>")
        for (task,), rows in (found.group_by("task", maintain_order=True) if found.height else []):
            graded = "correct" in rows.columns and rows["correct"].is_not_null().any()
            discordant = f", {int(rows['discordant'].sum())} discordant" if graded else ""
            parts.append(f'<h4 id="{slug("dis", pair.name, task)}">{escape(task)}: {rows.height} '
                         f"disagreements{discordant}</h4>")
            parts += [_example(r, pair, study.has_text) for r in rows.head(DRILL_LIMIT).iter_rows(named=True)]
            if rows.height > DRILL_LIMIT:
                parts.append(f"<p>… and {rows.height - DRILL_LIMIT} more in records.parquet.</p>")
    return section("disagreements", "Where the models disagree", "\n".join(parts))


def _answer_span(row: dict, suffix: str, limit: int | None = None) -> str:
    """The parsed answer, marked right or wrong where the task has a right answer."""
    if row.get(f"error{suffix}"):
        return f'<span class="wrong">error ({escape(str(row[f"error_kind{suffix}"]))})</span>'
    parsed = row.get(f"parsed{suffix}")
    right = row.get(f"correct{suffix}")
    text = _clip(parsed, limit) if parsed else "invalid"
    if right is None:
        return f'<span class="answer">{escape(text)}</span>'
    return f'<span class="{"right" if right else "wrong"}">{escape(text)}{" ✓" if right else " ✗"}</span>'


def _clip(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _example(row: dict, pair: ArmPair, has_text: bool) -> str:
    badge = '<span class="badge">discordant</span>' if row.get("discordant") else ""
    if row.get("score_metric"):
        badge += (f'<span class="badge">{escape(row["score_metric"])} {escape(fmt(row.get("score")))} vs '
                  f'{escape(fmt(row.get("score_c")))}</span>')
    gold = str(row.get("gold"))
    summary = (f'<summary><code>{escape(row["example_id"])}</code> · {escape(row["task"])} · gold '
               f'<strong>{escape(_clip(gold, SUMMARY_CHARS))}</strong> · {escape(pair.baseline)}: '
               f'{_answer_span(row, "", SUMMARY_CHARS)} · {escape(pair.candidate)}: '
               f'{_answer_span(row, "_c", SUMMARY_CHARS)}{badge}</summary>')
    body = _example_text(row, pair) if has_text else '<p class="privacy">Prompt and answer text withheld (--no-text).</p>'
    return (f'<details class="example" data-id="{escape(row["example_id"])}" data-task="{escape(row["task"])}">'
            f"{summary}{body}</details>")


def _example_text(row: dict, pair: ArmPair) -> str:
    gold = str(row.get("gold"))
    reference = f"<h5>gold answer</h5><pre>{escape(gold)}</pre>" if len(gold) > SUMMARY_CHARS else ""
    answers = "".join(
        f'<div><h5>{escape(arm)} answered</h5><pre>{escape(_text_or_error(row, suffix))}</pre>'
        f'<p>parsed: {_answer_span(row, suffix)}</p></div>'
        for arm, suffix in ((pair.baseline, ""), (pair.candidate, "_c")))
    seen = "".join(f"<p class=\"passages\">passages {escape(arm)} saw: {escape(row[f'passages{suffix}'])}</p>"
                   for arm, suffix in ((pair.baseline, ""), (pair.candidate, "_c")) if row.get(f"passages{suffix}"))
    prompts = [(pair.baseline, row.get("prompt"))]
    if row.get("prompt_c") != row.get("prompt"):
        prompts.append((pair.candidate, row.get("prompt_c")))
    shown = "".join(f"<details><summary>prompt as {escape(arm)} saw it</summary><pre>{escape(_shortened(text or ''))}"
                    "</pre></details>" for arm, text in prompts)
    return f'{reference}<div class="answers">{answers}</div>{seen}{shown}'


def _shortened(text: str) -> str:
    """Long prompts (whole patient records) keep their start and end here; records.parquet has all."""
    if len(text) <= PROMPT_CHARS:
        return text
    head, tail = text[: PROMPT_CHARS * 2 // 3], text[-PROMPT_CHARS // 3:]
    return f"{head}\n[… {len(text) - len(head) - len(tail)} characters left out here; see records.parquet …]\n{tail}"


def _text_or_error(row: dict, suffix: str) -> str:
    if row.get(f"error{suffix}"):
        return f"(no answer: {row[f'error{suffix}']})"
    return row.get(f"output{suffix}") or ""


def _reading_notes() -> str:
    text = (
        "<ul><li><strong>accuracy</strong> and the other quality scores (ROUGE, F1) count engine errors and "
        "unreadable answers as wrong. <strong>invalid_rate</strong> is the share of answers from which no answer "
        "could be read; <strong>error_rate</strong> the share where the engine failed (native crash, prompt too "
        "long); <strong>hallucination_rate</strong> the share of answers naming an option or code that does not "
        "exist. For these failure measures lower is better.</li>"
        "<li>Each delta is candidate minus baseline on the same examples (paired on example id), with a 95% paired "
        "bootstrap interval (10,000 resamples, seeded).</li>"
        "<li>p is the exact McNemar test for per-example yes/no metrics: b = examples where only the baseline "
        "scores (is right, or is invalid), c = only the candidate. Other metrics use a paired permutation "
        "(sign-flip) test and have no b / c. p (Holm) adjusts each metric across the tasks of a pair; a verdict "
        "needs p (Holm) &lt; 0.05.</li>"
        "<li>Per-model intervals are percentile bootstrap intervals over examples.</li></ul>")
    return section("method", "How to read this report", text)
