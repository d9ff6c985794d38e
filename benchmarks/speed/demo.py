"""The full run's sections for one model (the bundled demo models, or --model): multiple-choice scoring against
llama-perplexity, one sequence against llama-bench, batched generation against llama-batched-bench, the RSS
overhead; and batched = one at a time on the runner's prompts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .children import BatchedRun, LettersRun, LoglikRun, MatchRun, Settings, TgRun, run_child
from .common import BATCH_SIZES, LOGLIK_CTX, first_difference, say
from .inputs import Item, few_shot_prefix, runner_prompts
from .peers import BatchedBenchRow, BenchRun, PerplexityRun, batched_bench, llama_bench, perplexity_mc


@dataclass(kw_only=True)
class LoglikRounds:
    edgeeval_seconds: list[float]
    perplexity_seconds: list[float]


@dataclass(kw_only=True)
class FaOffDiagnostic:
    """llama-perplexity with flash attention off: the attention kernels edgeeval runs."""

    items_per_s: float
    accuracy: float
    same_correctness_as_edgeeval: int
    ratio: float


@dataclass(kw_only=True)
class LoglikSection:
    """Multiple choice on the full option texts, each tool's quickest round, against llama-perplexity."""

    edgeeval_items_per_s: float
    perplexity_items_per_s: float
    edgeeval_accuracy: float
    perplexity_accuracy: float
    same_correctness: int
    edgeeval_peak_rss_mb: float
    perplexity_peak_rss_mb: float
    python_overhead: float
    prompt_tokens: int
    prompt_tokens_decoded: int
    edgeeval_settings: Settings
    rounds: LoglikRounds
    ratio: float
    perplexity_fa_off: FaOffDiagnostic


@dataclass(kw_only=True)
class FlashAttnDiagnostic:
    """edgeeval's zero-shot scoring with flash attention on, as the peer runs."""

    edgeeval_items_per_s: float
    accuracy: float
    same_correctness_as_perplexity: int
    ratio: float
    python_overhead: float


@dataclass(kw_only=True)
class RssSection:
    peak_rss_mb: float
    gguf_mb: float
    kv_cache_mb: float
    overhead_mb: float


@dataclass(kw_only=True)
class LettersSection:
    """The letter path (one pass over the prompt) against llama-bench pp512."""

    tokens_per_s: float
    pp512: float
    items_per_s: float
    accuracy: float
    tokens_decoded: int
    prompt_tokens: int
    python_overhead: float
    fraction: float
    fraction_vs_fa_off: float


@dataclass(kw_only=True)
class TgSection:
    """One sequence's generation against llama-bench tg128."""

    tokens_per_s: float
    tg128: float
    fraction: float
    fraction_vs_fa_off: float


@dataclass(kw_only=True)
class LlamaBenchSection:
    pp512: float
    tg128: float
    flash_attn: int | None
    rounds: list[BenchRun]
    fa_off: BenchRun


@dataclass(kw_only=True)
class CurvePoint:
    """Batched generation at one number of sequences: (prompt + generated) tokens/s, as llama-batched-bench counts."""

    edgeeval_tokens_per_s: float
    batched_bench_tokens_per_s: float
    fraction: float
    generated: int
    batched_bench_fa_off_tokens_per_s: float
    fraction_vs_fa_off: float
    expected: int


@dataclass(kw_only=True)
class BatchedSection:
    pp: int
    tg: int
    pp_mean: float
    curve: dict[str, CurvePoint]
    one_at_a_time_tokens_per_s: float
    speedup_over_one_at_a_time: float
    same_text_as_one_at_a_time: int
    n_compared: int


@dataclass(kw_only=True)
class ModelResult:
    model: str
    path: str
    gguf_mb: float
    loglik_zero_shot: LoglikSection
    loglik_zero_shot_flash_attn: FlashAttnDiagnostic
    rss: RssSection
    loglik_three_shot: LoglikSection
    letters: LettersSection
    tg: TgSection
    llama_bench: LlamaBenchSection
    batched: BatchedSection


@dataclass(kw_only=True)
class Differing:
    id: str
    batched: str
    single: str
    first_difference: int


@dataclass(kw_only=True)
class MatchResult:
    """Greedy answers batched (`--parallel 8`) against one at a time."""

    model: str
    same: int
    n: int
    rate: float
    prompts: str
    differing: list[Differing]


@dataclass(kw_only=True)
class ModelRun:
    """One model's measurements: what every section of it shares."""

    model: str
    items: list[Item]
    threads: int
    quick: bool
    tmp: Path

    @property
    def name(self) -> str:
        return Path(self.model).name

    @property
    def rounds(self) -> int:
        return 1 if self.quick else 2

    @property
    def base(self) -> dict:
        return {"model": self.model, "threads": self.threads, "n_ctx": LOGLIK_CTX}

    def log(self, message: str) -> None:
        say(self.name, message)


def measure_model(model: str, args, items: list[Item], shots: list[Item], tmp: Path) -> ModelResult:
    run = ModelRun(model=model, items=items, threads=args.threads, quick=args.quick, tmp=tmp)
    gguf_mb = os.path.getsize(model) / 2**20
    zero_shot, ppl = measure_loglik(run, "zero_shot", "")
    flash_attn = flash_attn_diagnostic(run, zero_shot, ppl)
    rss = rss_overhead(model, zero_shot.edgeeval_peak_rss_mb, gguf_mb)
    three_shot, _ = measure_loglik(run, "three_shot", few_shot_prefix(shots))
    letters, tg, bench = measure_one_sequence(run)
    return ModelResult(model=run.name, path=model, gguf_mb=gguf_mb, loglik_zero_shot=zero_shot,
                       loglik_zero_shot_flash_attn=flash_attn, rss=rss, loglik_three_shot=three_shot,
                       letters=letters, tg=tg, llama_bench=bench, batched=measure_batched(run, shots))


# --- multiple choice -----------------------------------------------------------------------------

def picks_like_perplexity(result: LoglikRun) -> list[int]:
    """llama-perplexity scores the mean log-prob of the tokens after the options' common prefix;
    from edgeeval's per-token log-probs that is the mean over the tokens no option shares."""
    picks = []
    for scores, tokens in zip(result["scores"], result["option_tokens"]):
        shared = len(os.path.commonprefix([tuple(t) for t in tokens]))
        means = []
        for score, toks in zip(scores, tokens):
            skip = max(0, shared - (len(toks) - score["n_tokens"]))
            kept = score["token_logprobs"][skip:] or score["token_logprobs"][-1:]
            means.append(sum(kept) / len(kept))
        picks.append(max(range(len(means)), key=means.__getitem__))
    return picks


def correctness(picks: list[int], items: list[Item]) -> list[int]:
    return [int(p == i["gold"]) for p, i in zip(picks, items)]


def measure_loglik(run: ModelRun, label: str, prefix: str) -> tuple[LoglikSection, PerplexityRun]:
    """Interleaved rounds, the quickest of each tool's; and the peer with flash attention off. Returns the
    section and the peer's quickest round."""
    ppl_runs: list[PerplexityRun] = []
    our_runs: list[LoglikRun] = []
    for _ in range(run.rounds):
        run.log(f"loglik {label}: llama-perplexity")
        ppl_runs.append(perplexity_mc(run.model, run.items, prefix, run.threads, run.tmp))
        run.log(f"loglik {label}: edgeeval")
        our_runs.append(run_child({**run.base, "kind": "loglik", "items": run.items, "prefix": prefix}))
    ppl = min(ppl_runs, key=lambda r: r.seconds)
    ours = min(our_runs, key=lambda r: r["seconds"])
    correct = correctness(picks_like_perplexity(ours), run.items)
    items_per_s = len(run.items) / ours["seconds"]
    # Diagnostic: the peer with flash attention off computes what edgeeval computes (same kernels),
    # so accuracy there shows whether a gap in accuracy is the attention kernel's rounding.
    run.log(f"loglik {label}: llama-perplexity -fa off (diagnostic)")
    off = perplexity_mc(run.model, run.items, prefix, run.threads, run.tmp, ("-fa", "off"))
    section = LoglikSection(
        edgeeval_items_per_s=items_per_s, perplexity_items_per_s=ppl.items_per_s,
        edgeeval_accuracy=100.0 * sum(correct) / len(run.items), perplexity_accuracy=ppl.accuracy,
        same_correctness=sum(a == b for a, b in zip(correct, ppl.correct)),
        edgeeval_peak_rss_mb=max(r["peak_rss_mb"] for r in our_runs),
        perplexity_peak_rss_mb=max(r.peak_rss_mb for r in ppl_runs),
        python_overhead=1 - ours["decode_seconds"] / ours["seconds"],
        prompt_tokens=ours["prompt_tokens"], prompt_tokens_decoded=ours["prompt_tokens_decoded"],
        edgeeval_settings=ours["settings"],
        rounds=LoglikRounds(edgeeval_seconds=[r["seconds"] for r in our_runs],
                            perplexity_seconds=[r.seconds for r in ppl_runs]),
        ratio=items_per_s / ppl.items_per_s,
        perplexity_fa_off=FaOffDiagnostic(
            items_per_s=off.items_per_s, accuracy=off.accuracy,
            same_correctness_as_edgeeval=sum(a == b for a, b in zip(correct, off.correct)),
            ratio=items_per_s / off.items_per_s))
    return section, ppl


def flash_attn_diagnostic(run: ModelRun, zero_shot: LoglikSection, ppl: PerplexityRun) -> FlashAttnDiagnostic:
    """The profile of the gap to llama-perplexity: the same scoring with flash attention on (as the
    peer runs; edgeeval leaves it off because its CPU kernel's results change with batch layout)."""
    run.log("loglik zero_shot: edgeeval with flash attention (diagnostic)")
    fa: LoglikRun = run_child({**run.base, "kind": "loglik", "items": run.items, "prefix": "", "flash_attn": True})
    fa_correct = correctness(picks_like_perplexity(fa), run.items)
    return FlashAttnDiagnostic(edgeeval_items_per_s=len(run.items) / fa["seconds"],
                               accuracy=100.0 * sum(fa_correct) / len(run.items),
                               same_correctness_as_perplexity=sum(a == b for a, b in zip(fa_correct, ppl.correct)),
                               ratio=len(run.items) / fa["seconds"] / zero_shot.perplexity_items_per_s,
                               python_overhead=1 - fa["decode_seconds"] / fa["seconds"])


def rss_overhead(model: str, peak_mb: float, gguf_mb: float) -> RssSection:
    """The loglik run's peak RSS less the GGUF and the KV cache: f16, LOGLIK_CTX cells, every layer full size (as
    with swa_full), as edgeeval's memory check estimates it."""
    from edgeeval.config.gguf import read_gguf_metadata
    from edgeeval.engine.memory import kv_cache_bytes

    kv_bytes = kv_cache_bytes(read_gguf_metadata(model).metadata, LOGLIK_CTX)
    if kv_bytes is None:
        raise RuntimeError(f"{model}: its metadata does not give the KV cache's size")
    kv = kv_bytes / 2**20
    return RssSection(peak_rss_mb=peak_mb, gguf_mb=gguf_mb, kv_cache_mb=kv, overhead_mb=peak_mb - gguf_mb - kv)


# --- one sequence --------------------------------------------------------------------------------

def measure_one_sequence(run: ModelRun) -> tuple[LettersSection, TgSection, LlamaBenchSection]:
    """The letter path against pp512 and one sequence's generation against tg128."""
    # Interleaved rounds, best of each: on a shared machine one round is at the mercy of the others
    # (seen here: the same measurement 15% apart in two runs twenty minutes apart).
    benches: list[BenchRun] = []
    letter_runs: list[LettersRun] = []
    tg_runs: list[TgRun] = []
    for _ in range(run.rounds):
        run.log("llama-bench pp512 / tg128")
        benches.append(llama_bench(run.model, run.threads, 2 if run.quick else 3))
        run.log("letter fast path")
        letter_runs.append(run_child({**run.base, "kind": "letters", "items": run.items, "n_ctx": 2048}))
        run.log("single-sequence generation")
        tg_runs.append(run_child({**run.base, "kind": "tg", "n_ctx": 2048, "n_gen": 128, "repeats": 2}))
    run.log("llama-bench pp512 / tg128 with -fa off (diagnostic: edgeeval's attention kernels)")
    bench = LlamaBenchSection(pp512=max(b.pp512 for b in benches), tg128=max(b.tg128 for b in benches),
                              flash_attn=benches[0].flash_attn, rounds=benches,
                              fa_off=llama_bench(run.model, run.threads, 2 if run.quick else 3, ("-fa", "off")))
    letters = min(letter_runs, key=lambda r: r["seconds"])
    tg = max(tg_runs, key=lambda r: r["tokens_per_s"])
    letters_per_s = letters["tokens_decoded"] / letters["seconds"]
    picks_correct = sum(p == i["gold"] for p, i in zip(letters["picks"], run.items))
    letter_section = LettersSection(
        tokens_per_s=letters_per_s, pp512=bench.pp512, items_per_s=letters["n_items"] / letters["seconds"],
        accuracy=100.0 * picks_correct / len(run.items), tokens_decoded=letters["tokens_decoded"],
        prompt_tokens=letters["prompt_tokens"], python_overhead=1 - letters["decode_seconds"] / letters["seconds"],
        fraction=letters_per_s / bench.pp512, fraction_vs_fa_off=letters_per_s / bench.fa_off.pp512)
    tg_section = TgSection(tokens_per_s=tg["tokens_per_s"], tg128=bench.tg128,
                           fraction=tg["tokens_per_s"] / bench.tg128,
                           fraction_vs_fa_off=tg["tokens_per_s"] / bench.fa_off.tg128)
    return letter_section, tg_section, bench


# --- batched generation --------------------------------------------------------------------------

def measure_batched(run: ModelRun, shots: list[Item]) -> BatchedSection:
    pp, tg_len = (128, 32) if run.quick else (256, 64)
    texts = [item["question"] for item in run.items] + [s["question"] for s in shots]
    peers: list[dict[str, BatchedBenchRow]] = []
    ours_runs: list[BatchedRun] = []
    for _ in range(run.rounds):
        run.log(f"batched generation: llama-batched-bench pp={pp} tg={tg_len}")
        peers.append(batched_bench(run.model, run.threads, pp, tg_len, BATCH_SIZES))
        run.log("batched generation: edgeeval")
        ours_runs.append(run_child({**run.base, "kind": "batched", "texts": texts, "pp": pp, "tg": tg_len,
                                    "sizes": list(BATCH_SIZES), "n_ctx": max(BATCH_SIZES) * (pp + tg_len) + 256}))
    run.log("batched generation: llama-batched-bench -fa off (diagnostic)")
    peer_fa_off = batched_bench(run.model, run.threads, pp, tg_len, BATCH_SIZES, ("-fa", "off"))
    # Per size, each tool's quickest round.
    peer = {pl: max((p[pl] for p in peers), key=lambda r: r.speed) for pl in peers[0]}
    sizes = {pl: min((o["sizes"][pl] for o in ours_runs), key=lambda r: r["seconds"]) for pl in ours_runs[0]["sizes"]}
    single = min((o["one_at_a_time"] for o in ours_runs), key=lambda r: r["seconds"])
    curve = {}
    for pl in map(str, BATCH_SIZES):
        o = sizes[pl]
        speed = (o["prompt_tokens"] + o["generated"]) / o["seconds"]
        curve[pl] = CurvePoint(edgeeval_tokens_per_s=speed, batched_bench_tokens_per_s=peer[pl].speed,
                               fraction=speed / peer[pl].speed, generated=o["generated"],
                               batched_bench_fa_off_tokens_per_s=peer_fa_off[pl].speed,
                               fraction_vs_fa_off=speed / peer_fa_off[pl].speed, expected=int(pl) * tg_len)
    single_speed = (single["prompt_tokens"] + single["generated"]) / single["seconds"]
    top = str(max(BATCH_SIZES))
    return BatchedSection(pp=pp, tg=tg_len, pp_mean=ours_runs[0]["pp_mean"], curve=curve,
                          one_at_a_time_tokens_per_s=single_speed,
                          speedup_over_one_at_a_time=curve[top].edgeeval_tokens_per_s / single_speed,
                          same_text_as_one_at_a_time=sum(a == b for a, b in zip(sizes[top]["texts"], single["texts"])),
                          n_compared=len(single["texts"]))


# --- batched = one at a time ---------------------------------------------------------------------

def match_rate(model: str, args) -> MatchResult:
    """Greedy answers to the case challenges as `edgeeval run --parallel 8` would send them (the
    runner's chat-templated prompts), batched vs one at a time."""
    prompts, ids, how = runner_prompts(model)
    out: MatchRun = run_child({"model": model, "threads": args.threads, "n_ctx": 8192, "kind": "match",
                               "prompts": prompts, "max_tokens": 32 if args.quick else 128, "n_parallel": 8})
    same = sum(a == b for a, b in zip(out["batched"], out["single"]))
    return MatchResult(model=Path(model).name, same=same, n=len(prompts), rate=same / len(prompts), prompts=how,
                       differing=[Differing(id=i, batched=a, single=b, first_difference=first_difference(a, b))
                                  for i, a, b in zip(ids, out["batched"], out["single"]) if a != b])
