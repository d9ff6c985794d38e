"""What both renderings (Markdown and HTML) show, as plain values: number formats, run facts,
per-pair rows and the examples on which two models disagree."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from edgeeval.report.findings import lower_is_better
from edgeeval.report.study import ArmPair, Run, Study
from edgeeval.scoring.metrics import per_item_means


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def fmt_ci(value, low, high) -> str:
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def metric_label(metric: str) -> str:
    return f"{metric} (lower is better)" if lower_is_better(metric) else metric


def run_facts(run: Run) -> dict[str, str]:
    """What a reader needs to know about where and how a run was made, as label -> text."""
    manifest = run.manifest
    machine = manifest.get("machine", {})
    settings = manifest.get("settings", {})
    engines = manifest.get("engine", {}).values()
    invocations = manifest.get("invocations", [])
    offload = sorted({str(e.get("gpu_offload")) for e in engines if "gpu_offload" in e})
    return {
        "edgeeval": str(manifest.get("edgeeval", "–")),
        "llama-cpp-python": str(manifest.get("llama_cpp_python", "–")),
        "llama.cpp": " / ".join(sorted({llama_cpp_build(e) for e in engines if e.get("system_info")})) or "–",
        "CPU": f"{machine.get('cpu', '–')} ({machine.get('machine', '–')})",
        "platform": f"{machine.get('platform', '–')}, Python {machine.get('python', '–')}",
        "backend": f"{settings.get('backend', '–')}, {settings.get('n_threads', '–')} threads, "
                   f"n_gpu_layers {settings.get('n_gpu_layers', '–')}, GPU offload {'/'.join(offload) or '–'}",
        "batching": f"n_batch {settings.get('n_batch', '–')}, n_ubatch {settings.get('n_ubatch', '–')}, "
                    f"--parallel {_parallel(invocations, engines)}",
        "speculative decoding": _speculative(settings, engines),
        "prompt tokens": _prompt_tokens(engines),
        "finished": invocations[-1].get("finished", "–") if invocations else "–",
        "wall time": f"{sum(i.get('wall_seconds', 0) for i in invocations):.1f} s over {len(invocations)} invocation(s)",
    }


def llama_cpp_build(engine: dict) -> str:
    """An engine's llama.cpp in a few words, e.g. '0c1e570 (ggml 0.25.3), CPU AVX512+AMX' or
    '... , CUDA + CPU AVX2'; the full system-info string stays in manifest.json."""
    build = engine.get("llama_cpp") or {}
    backends = backend_summary(str(engine["system_info"]))
    if not build.get("commit"):
        return backends
    version = f" (ggml {build['version']})" if build.get("version") else ""
    return f"{build['commit']}{version}, {backends}"


_CPU_LEVELS = ("AVX512", "AVX2", "AVX", "SSE3", "SVE", "NEON")
"""The instruction sets named for a CPU backend: the widest one it was built with."""


def backend_summary(system_info: str) -> str:
    """llama.cpp's system info ('CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 | AVX2 = 1 | ...') as its
    backends, the CPU's with its widest instruction set; text that is not in that form, as it is."""
    backends: dict[str, list[str]] = {}
    current = None
    for part in system_info.split("|"):
        name, sep, rest = part.partition(" : ")
        if sep:
            current, part = name.strip(), rest
        key, eq, value = part.partition("=")
        if current is not None and eq:
            backends.setdefault(current, []).extend([key.strip()] if value.strip() == "1" else [])
    if not backends:
        return system_info
    words = []
    for name, flags in backends.items():
        level = next((f for f in _CPU_LEVELS if f in flags), "") if name == "CPU" else ""
        amx = "+AMX" if name == "CPU" and any(f.startswith("AMX") for f in flags) else ""
        words.append(f"{name} {level}{amx}".strip())
    return " + ".join(words)


def _parallel(invocations, engines) -> str:
    """What --parallel was, and what 'auto' chose for each model (recorded per engine)."""
    asked = invocations[-1].get("parallel", 1) if invocations else "–"
    chosen = sorted({str(e["parallel"]) for e in engines if "parallel" in e})
    return f"{asked} ({'/'.join(chosen)} sequences)" if asked == "auto" and chosen else str(asked)


def _speculative(settings: dict, engines) -> str:
    """The drafting setting, the draft model, and how many drafted tokens the models accepted."""
    tokens = [e.get("tokens") or {} for e in engines]
    drafted = sum(t.get("drafted_tokens", 0) for t in tokens)
    accepted = sum(t.get("accepted_tokens", 0) for t in tokens)
    text = str(settings.get("speculative", "none"))
    if settings.get("draft_model"):
        text += f", draft model {Path(str(settings['draft_model'])).name}"
    if drafted:
        text += f", {accepted:,} of {drafted:,} drafted tokens accepted ({100 * accepted / drafted:.0f}%)"
    return text


def _prompt_tokens(engines) -> str:
    """How much of the prompts the engines decoded: the rest came from the KV cache (a shared system
    or few-shot prefix kept between examples). Counted since each engine last started."""
    tokens = [e.get("tokens") or {} for e in engines]
    total = sum(t.get("prompt_tokens", 0) for t in tokens)
    decoded = sum(t.get("prompt_tokens_decoded", 0) for t in tokens)
    if not total:
        return "–"
    return f"{decoded:,} decoded of {total:,} in prompts ({100 * (1 - decoded / total):.0f}% reused from the cache)"


def model_facts(meta: dict) -> dict[str, str]:
    return {
        "family": str(meta.get("family") or "–"),
        "file": Path(str(meta.get("path", "–"))).name,
        "architecture": str(meta.get("architecture") or "–"),
        "quantization": str(meta.get("quantization") or "–"),
        "size (MB)": f"{meta.get('size_bytes', 0) / 1e6:.0f}",
        "chat template": str(meta.get("chat_template") or "–"),
        "sha256": str(meta.get("sha256") or "–"),
    }


def task_scoring(meta: dict) -> str:
    """How a task's answers were obtained, from its manifest entry: 'generated, parsed' or, for a
    loglik run, 'loglik: letter' / 'loglik: full text, mean' (the normalisation that decided)."""
    if meta.get("mode") != "loglik":
        return "generated, parsed"
    loglik = meta.get("loglik") or {}
    if loglik.get("scoring") == "letter":
        return "loglik: letter"
    return f"loglik: full text, {loglik.get('normalization', 'mean')}"


def side_names(study: Study, pair: ArmPair) -> tuple[str, str]:
    """What to call the two sides: their families ('general', 'biomedical') when those tell them
    apart, else the arm labels."""
    base, cand = study.family(pair.baseline), study.family(pair.candidate)
    if base and cand and base != cand:
        return base, cand
    return pair.baseline, pair.candidate


def arm_with_family(study: Study, arm: str) -> str:
    """'bio-small (biomedical)', or the bare label when the family is unknown."""
    family = study.family(arm)
    return f"{arm} ({family})" if family else arm


def pair_rows(study: Study, pair: ArmPair) -> pl.DataFrame:
    return study.comparison.filter(pl.col("pair") == pair.name)


def tasks_in(study: Study) -> list[str]:
    """Tasks in manifest order, then any others that have results."""
    seen = list(study.tasks)
    if study.results.height:
        seen += [t for t in study.results["task"].unique(maintain_order=True).to_list() if t not in seen]
    return seen


def arms_with_results(study: Study) -> list[str]:
    present = set(study.results["model"].to_list()) if study.results.height else set()
    return [label for label in study.arms if label in present]


def discordant_counts(row: dict) -> str:
    """'b / c' for a McNemar row; other tests have no discordant counts."""
    return "–" if row.get("b") is None or row.get("c") is None else f"{row['b']} / {row['c']}"


CONFUSION = "confusion_"


def confusion_cell(metric: str) -> tuple[str, str]:
    """'confusion_B_as_invalid' -> ('B', 'invalid'): gold answer and given answer."""
    gold, _, answer = metric[len(CONFUSION):].rpartition("_as_")
    return gold, answer


def plain_results(results: pl.DataFrame) -> pl.DataFrame:
    """The results without the confusion-table rows (which are drawn as tables of their own)."""
    return results.filter(~pl.col("metric").str.starts_with(CONFUSION)) if results.height else results


def confusion_table(results: pl.DataFrame, model: str, task: str) -> tuple[list[str], list[str], dict]:
    """(gold answers, given answers, {(gold, given): share}) of one model on one task; empty when the
    task has no confusion rows."""
    rows = results.filter((pl.col("model") == model) & (pl.col("task") == task)
                          & pl.col("metric").str.starts_with(CONFUSION)) if results.height else results
    cells = {confusion_cell(r["metric"]): r["value"] for r in rows.iter_rows(named=True)}
    golds = list(dict.fromkeys(g for g, _ in cells))
    answers = list(dict.fromkeys(a for _, a in cells))
    return golds, answers, cells


DRILL_COLUMNS = ("task", "example_id", "gold", "parsed", "correct", "error", "error_kind", "output", "prompt",
                 "passages")


def disagreements(scored: pl.DataFrame, baseline: str, candidate: str) -> pl.DataFrame:
    """Examples both models answered where their parsed answers or their correctness differ.
    `discordant` marks those that count in McNemar's test (one right, one wrong); for tasks scored
    per example on a scale (ROUGE, code F1) `score`/`score_c` hold the task's first such metric and
    the largest differences come first."""
    keep = [c for c in DRILL_COLUMNS if c in scored.columns]
    if not scored.height or not {"task", "example_id"} <= set(keep):
        return pl.DataFrame()
    scored = per_item_means(scored)  # an item asked several times: the share of its repetitions answered right
    parts = []
    for (task,), rows in scored.group_by("task", maintain_order=True):
        score = _score_column(rows)
        columns = keep + ([pl.col(score).cast(pl.Float64).alias("score")] if score else [])
        base = rows.filter(pl.col("model") == baseline).select(columns)
        cand = rows.filter(pl.col("model") == candidate).select(columns)
        joined = base.join(cand, on=["task", "example_id"], how="inner", suffix="_c")
        if score:
            joined = joined.with_columns(score_metric=pl.lit(score))
        parts.append(_disagreeing(joined, "correct" in keep, "parsed" in keep, score))
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def _score_column(rows: pl.DataFrame) -> str | None:
    """The task's first declared metric that is also a per-example numeric column (rougeL, code_f1)."""
    declared = rows["metrics"].drop_nulls() if "metrics" in rows.columns else pl.Series([], dtype=pl.String)
    names = declared[0].split(",") if declared.len() else []
    numeric = {c for c, dtype in rows.schema.items() if dtype.is_numeric()}
    return next((name for name in names if name in numeric), None)


def _disagreeing(joined: pl.DataFrame, has_correct: bool, has_parsed: bool, score: str | None) -> pl.DataFrame:
    discordant = (pl.col("correct") != pl.col("correct_c")).fill_null(False) if has_correct else pl.lit(False)
    differs = discordant
    if score:
        # Scored on a scale: the answers are texts (withheld under --no-text); the scores tell them apart.
        differs = differs | pl.col("score").ne_missing(pl.col("score_c"))
    elif has_parsed:
        differs = differs | pl.col("parsed").ne_missing(pl.col("parsed_c"))
    gap = (pl.col("score_c") - pl.col("score")).abs() if score else pl.lit(0.0)
    return (joined.with_columns(discordant=discordant, gap=gap).filter(differs)
            .sort(["discordant", "gap", "example_id"], descending=[True, True, False]).drop("gap"))


def repetition_note(study, task: str, repeats: int) -> str:
    """What the per-repetition table under a task's results shows: repetitions, or rotations of the options."""
    permute = (study.tasks.get(task) or {}).get("permute")
    asked = (f"under {repeats} cyclic rotations of its options (--permute {permute})" if permute
             else f"{repeats} times")
    return (f"Each item was asked {asked}; the figures above are per-item means. Across the "
            f"{'rotations' if permute else 'repetitions'}, each computed on its own:")


def arrangement(meta: dict) -> str:
    """How a task's items were arranged, where the run chose it (', options rotated (cyclic)', ', documents
    ordered per patient'); '' otherwise."""
    parts = [f"options rotated ({meta['permute']})" if meta.get("permute") else "",
             f"documents ordered per {meta['document_order']}" if meta.get("document_order") else ""]
    return "".join(f", {part}" for part in parts if part)
