"""What the benchmark prints and writes: the table and the machine-readable last line of a full run, the lines of
the other modes, and results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .demo import MatchResult, ModelResult
from .jsonable import to_json
from .lmeval import LmevalComparison
from .profiles import Divergence, MissesProfile

Row = tuple[str, str, str, str, str]


def read_results(path: Path) -> dict:
    """The results file as it is (the modes that measure a part merge it into the last full run's)."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def print_table(models: list[ModelResult], lmeval: LmevalComparison | None, match: list[MatchResult]) -> None:
    rows: list[Row] = []
    for r in models:
        rows += loglik_rows(r) + single_rows(r) + batched_rows(r)
        rows.append((r.model, "RSS overhead MB", f"{r.rss.overhead_mb:.0f}",
                     f"gguf {r.rss.gguf_mb:.0f} + kv {r.rss.kv_cache_mb:.0f}", ""))
        rows.append((r.model, "python overhead", f"{100 * r.loglik_zero_shot.python_overhead:.1f}%", "", ""))
    if lmeval:
        rows.append((lmeval.model, "lm-eval gguf s/item", f"{lmeval.edgeeval_per_item_s:.2f}",
                     f"lm-eval {lmeval.lmeval.per_item_s:.1f}", f"{lmeval.ratio:.0f}x"))
    for m in match:
        rows.append((m.model, "batched = one-at-a-time (runner prompts)", f"{m.same}/{m.n}", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def loglik_rows(r: ModelResult) -> list[Row]:
    m, rows = r.model, []
    for label, x in (("zero_shot", r.loglik_zero_shot), ("three_shot", r.loglik_three_shot)):
        rows.append((m, f"loglik {label} items/s", f"{x.edgeeval_items_per_s:.2f}",
                     f"perplexity {x.perplexity_items_per_s:.2f}", f"{x.ratio:.2f}x"))
        rows.append((m, f"  accuracy {label}", f"{x.edgeeval_accuracy:.1f}",
                     f"perplexity {x.perplexity_accuracy:.1f}", ""))
        rows.append((m, f"  peak RSS MB {label}", f"{x.edgeeval_peak_rss_mb:.0f}",
                     f"perplexity {x.perplexity_peak_rss_mb:.0f}", ""))
        off = x.perplexity_fa_off
        rows.append((m, "  (diagnostic) perplexity -fa off", f"{x.edgeeval_items_per_s:.2f}",
                     f"items/s {off.items_per_s:.2f}, accuracy {off.accuracy:.1f}", f"{off.ratio:.2f}x"))
        if label == "zero_shot":
            fa = r.loglik_zero_shot_flash_attn
            rows.append((m, "  (diagnostic) edgeeval with flash attn", f"{fa.edgeeval_items_per_s:.2f}",
                         f"accuracy {fa.accuracy:.1f}", f"{fa.ratio:.2f}x"))
    return rows


def single_rows(r: ModelResult) -> list[Row]:
    m, off = r.model, r.llama_bench.fa_off
    return [(m, "letter path tok/s", f"{r.letters.tokens_per_s:.0f}", f"pp512 {r.letters.pp512:.0f}",
             f"{r.letters.fraction:.2f}"),
            (m, "  (diagnostic) vs pp512 -fa off", "", f"pp512 {off.pp512:.0f}", f"{r.letters.fraction_vs_fa_off:.2f}"),
            (m, "generation tok/s", f"{r.tg.tokens_per_s:.1f}", f"tg128 {r.tg.tg128:.1f}", f"{r.tg.fraction:.2f}"),
            (m, "  (diagnostic) vs tg128 -fa off", "", f"tg128 {off.tg128:.1f}", f"{r.tg.fraction_vs_fa_off:.2f}")]


def batched_rows(r: ModelResult) -> list[Row]:
    rows: list[Row] = [(r.model, f"batched pl={pl} tok/s", f"{c.edgeeval_tokens_per_s:.0f}",
                        f"batched-bench {c.batched_bench_tokens_per_s:.0f} (-fa off "
                        f"{c.batched_bench_fa_off_tokens_per_s:.0f})", f"{c.fraction:.2f} ({c.fraction_vs_fa_off:.2f})")
                       for pl, c in r.batched.curve.items()]
    rows.append((r.model, "batched speedup vs own loop", f"{r.batched.speedup_over_one_at_a_time:.2f}x", "", ""))
    return rows


def summary_line(models: list[ModelResult], lmeval: LmevalComparison | None) -> str:
    """The full run's machine-readable line: ratios and fractions the worst over the models, RSS overhead the
    largest."""

    def worst(values):
        return min(values) if values else float("nan")

    fields = {
        "ratio_vs_lmeval": lmeval.ratio if lmeval else float("nan"),
        "ratio_vs_perplexity": worst([m.loglik_zero_shot.ratio for m in models]),
        "ratio_vs_perplexity_3shot": worst([m.loglik_three_shot.ratio for m in models]),
        "pp_fraction": worst([m.letters.fraction for m in models]),
        "tg_fraction": worst([m.tg.fraction for m in models]),
        "batched_fraction": worst([c.fraction for m in models for c in m.batched.curve.values()]),
        "rss_overhead_mb": max(m.rss.overhead_mb for m in models),
    }
    return " ".join(f"{k}={v:.2f}" for k, v in fields.items())


def fields_line(fields: dict[str, Any]) -> str:
    """Summary fields as `key=value` (floats to two places)."""
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def print_misses(misses: MissesProfile) -> None:
    for part in ("letter_path_gemma", "batched_8_gemma", "loglik_smollm2"):
        for key, value in to_json(getattr(misses, part)).items():
            if isinstance(value, dict) and "median" in value:
                print(f"{part:20s} {key:32s} median {value['median']:.3f}  "
                      f"[{value['min']:.3f}, {value['max']:.3f}] over {len(value['rounds'])} rounds")


def print_divergence(rows: list[Divergence]) -> None:
    for row in rows:
        print(json.dumps({k: v for k, v in to_json(row).items() if k != "flips"}))
        for flip in row.flips[:12]:
            print(f"   {flip.task} {flip.id} @{flip.position}: margin {flip.at['margin']:.3f}, "
                  f"gap moved {flip.at['gap_moved']:.3f}, max |delta| {flip.at['max_abs_delta']:.3f}")


def print_suite(section) -> None:
    """The suite section's tables: per model and task, prompt tokens decoded per example and seconds, before
    (batched, every prompt whole), after (batched, shared prefixes once) and one at a time; then the layouts."""
    print(f"{'model':36s} {'task':28s} {'n':>4s} {'P':>3s} {'tokens/ex':>9s} {'before':>8s} {'after':>8s} "
          f"{'one':>8s} {'reuse':>6s} {'s before':>8s} {'s after':>8s} {'s one':>8s} {'same':>5s}")
    for r in section.tasks:
        d, s = r.decoded_per_example, r.seconds
        print(f"{r.model[:36]:36s} {r.task[:28]:28s} {r.examples:4d} {r.parallel:3d} {r.prompt_tokens_per_example:9.0f} "
              f"{d['before']:8.0f} {d['after']:8.0f} {d['one']:8.0f} {r.reuse_factor:6.2f} {s['before']:8.1f} "
              f"{s['after']:8.1f} {s['one']:8.1f} {r.same_as_one:3d}/{r.examples}")
    if section.layouts:
        print(f"cache layouts ({section.layout_model}): seconds for n sequences, each a shared prefix + 32 own "
              "tokens + 16 generated")
        for layout in ("streams", "unified"):
            for prefix in sorted({c.prefix for c in section.layouts}):
                row = [c for c in section.layouts if c.layout == layout and c.prefix == prefix]
                print(f"  {layout:8s} prefix {prefix:5d}: " + "  ".join(f"{c.n_seq:2d}: {c.seconds:6.2f}s" for c in row))
    for name, run in section.runs.items():
        print(f"demo pair, MedNLI + MeQSum, {name:10s} ({' '.join(run.options) or 'defaults'}): "
              + ", ".join(f"{m} {s:.1f}s" for m, s in run.seconds.items()) + f"; {run.reused}")
    projection = section.projection
    if projection:
        print(f"suite reuse factor (the study's sizes, CLUE's repetitions): {projection['suite_reuse_factor']:.2f}")
        if "hours_parallel_auto_with_sharing" in projection:
            print(f"8B pair, --parallel auto: {projection['hours_parallel_auto_without_sharing']:.0f} h without sharing, "
                  f"{projection['hours_parallel_auto_with_sharing']:.0f} h with")
