"""Report files: results.csv, comparison.csv and report.md, rebuilt from a run directory's records."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from edgeeval.metrics import compare_pair, score_multiple_choice, summarize
from edgeeval.scoring import load_current_records
from edgeeval.store import write_private_text

SIGNIFICANCE = 0.05


def build_report(run_dir: Path, seed: int = 0) -> Path:
    """Score the run's records and write the report files; returns the path of report.md."""
    manifest, records = load_current_records(run_dir)
    scored = score_multiple_choice(records) if records.height else records
    results = summarize(scored, seed=seed) if records.height else pl.DataFrame()
    comparisons = [
        compare_pair(scored, name, pair["baseline"], pair["candidate"], seed=seed)
        for name, pair in manifest.get("pairs", {}).items()
        if records.height and {pair["baseline"], pair["candidate"]} <= set(scored["model"].unique())
    ]
    comparison = pl.concat(comparisons) if comparisons else pl.DataFrame()
    write_private_text(run_dir / "results.csv", results.write_csv() if results.height else "")
    write_private_text(run_dir / "comparison.csv", comparison.write_csv() if comparison.height else "")
    text = render_markdown(manifest, scored, results, comparison)
    write_private_text(run_dir / "report.md", text)
    return run_dir / "report.md"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def verdict(row: dict) -> str:
    """Plain words for a paired accuracy difference, judged on the Holm-adjusted p-value."""
    p = row.get("p_holm", row.get("p_value"))
    if p is None or math.isnan(p) or p >= SIGNIFICANCE:
        return "no significant difference"
    better = row["delta"] > 0
    if row["metric"] == "accuracy":
        return "candidate better" if better else "baseline better"
    return "candidate higher" if better else "baseline higher"


def render_markdown(manifest: dict, scored: pl.DataFrame, results: pl.DataFrame, comparison: pl.DataFrame) -> str:
    lines = ["# edgeeval report", ""]
    machine = manifest.get("machine", {})
    runs = manifest.get("invocations", [])
    lines += [
        f"- edgeeval {manifest.get('edgeeval')}, llama-cpp-python {manifest.get('llama_cpp_python')}",
        f"- machine: {machine.get('cpu')} ({machine.get('platform')})",
        f"- last run finished {runs[-1]['finished'] if runs else '–'}; "
        f"wall time of that invocation {runs[-1]['wall_seconds'] if runs else '–'} s",
        "",
        "## Models",
        "",
        "| model | family | architecture | quantization | size (MB) | chat template | sha256 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in manifest.get("models", {}).items():
        lines.append(
            f"| {name} | {m.get('family')} | {m.get('architecture')} | {m.get('quantization')} | "
            f"{m.get('size_bytes', 0) / 1e6:.0f} | {m.get('chat_template')} | `{m.get('sha256', '')[:16]}…` |"
        )
    lines += ["", "## Tasks", "", "| task | examples | data | task hash |", "| --- | --- | --- | --- |"]
    for name, t in manifest.get("tasks", {}).items():
        lines.append(f"| {name} | {t.get('examples')} | `{Path(t.get('data', '')).name}` | `{t.get('hash')}` |")
    lines += _comparison_section(manifest, comparison)
    lines += _results_section(results)
    lines += _disagreements_section(manifest, scored)
    lines += ["", "Accuracy counts errors and unparseable answers as wrong; the invalid rate counts "
              "answers from which no offered option could be read; errors (native crash, prompt too "
              "long) are counted separately. CIs are 95% bootstrap intervals (paired for deltas); "
              "p-values are exact McNemar tests, Holm-adjusted across the tasks of the run.", ""]
    return "\n".join(lines)


def _comparison_section(manifest: dict, comparison: pl.DataFrame) -> list[str]:
    if not comparison.height:
        return ["", "## Paired comparison", "", "No pair has records for both models yet."]
    lines = []
    for pair, rows in comparison.group_by("pair", maintain_order=True):
        pair_name = pair[0]
        meta = manifest.get("pairs", {}).get(pair_name, {})
        lines += [
            "", f"## Paired comparison: {pair_name}", "",
            f"Baseline **{meta.get('baseline')}** vs candidate **{meta.get('candidate')}**; "
            "delta = candidate − baseline.", "",
            "| task | metric | baseline | candidate | delta [95% CI] | p | p (Holm) | n | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows.iter_rows(named=True):
            lines.append(
                f"| {row['task']} | {row['metric']} | {_fmt(row['baseline'])} | {_fmt(row['candidate'])} | "
                f"{_fmt(row['delta'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] | {_p(row['p_value'])} | "
                f"{_p(row.get('p_holm'))} | {row.get('n_paired')} | {verdict(row)} |"
            )
    return lines


def _results_section(results: pl.DataFrame) -> list[str]:
    if not results.height:
        return []
    lines = ["", "## Results per model", "", "| model | task | metric | value [95% CI] | n |", "| --- | --- | --- | --- | --- |"]
    for row in results.iter_rows(named=True):
        lines.append(
            f"| {row['model']} | {row['task']} | {row['metric']} | {_fmt(row['value'])} "
            f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] | {row['n']} |"
        )
    return lines


def _disagreements_section(manifest: dict, scored: pl.DataFrame, limit: int = 20) -> list[str]:
    lines = []
    for pair_name, pair in manifest.get("pairs", {}).items():
        base, cand = pair["baseline"], pair["candidate"]
        if not scored.height or not {base, cand} <= set(scored["model"].unique()):
            continue
        cols = ["task", "example_id", "gold", "parsed", "correct"]
        joined = (
            scored.filter(pl.col("model") == base).select(cols)
            .join(scored.filter(pl.col("model") == cand).select(cols), on=["task", "example_id", "gold"], suffix="_c")
            .filter(pl.col("correct") != pl.col("correct_c"))
            .sort(["task", "example_id"])
        )
        lines += ["", f"## Where {base} and {cand} disagree ({joined.height} examples)", "",
                  "| task | example | gold | baseline answer | candidate answer |", "| --- | --- | --- | --- | --- |"]
        for row in joined.head(limit).iter_rows(named=True):
            lines.append(
                f"| {row['task']} | {row['example_id']} | {row['gold']} | "
                f"{row['parsed'] or 'invalid'}{' ✓' if row['correct'] else ''} | "
                f"{row['parsed_c'] or 'invalid'}{' ✓' if row['correct_c'] else ''} |"
            )
        if joined.height > limit:
            lines.append(f"\n… and {joined.height - limit} more (see records/).")
    return lines
