"""`--misses`: the profile behind the demo models' three misses of the full run; `--misses --divergence`: where
multi-token decodes of one sequence pick another greedy token than single-token ones."""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .children import BatchedRun, DivergenceAnswer, LettersRun, LoglikRun, Position, run_child
from .common import LOGLIK_CTX, Machine, machine, say
from .inputs import OTHER_GENERATION_TASKS, SUMMARY_TASKS, Item, default_models, load_items, runner_prompts, task_spec
from .jsonable import spliced
from .peers import batched_bench, ensure_peers, perplexity_mc, prompt_bench

# The peer's variants for batched generation: as its users run it, then step by step closer to what edgeeval's
# batched context does (no flash attention; the full cache for sliding-window layers, kept so that batched and
# one-at-a-time answers agree).
BATCHED_VARIANTS = {"as_run": (), "fa_off": ("-fa", "off"), "fa_off_swa_full": ("-fa", "off", "--swa-full")}


@dataclass(kw_only=True)
class Spread:
    median: float
    min: float
    max: float
    rounds: list[float]


def spread(values: list[float]) -> Spread:
    return Spread(median=statistics.median(values), min=min(values), max=max(values), rounds=values)


@dataclass(kw_only=True)
class LetterRound:
    tokens_per_s: float
    tokens_per_s_in_decode: float
    mean_prompt_tokens: int
    bench: dict[str, float] = spliced()  # llama-bench's pp{length}_fa_{on|off}


@dataclass(kw_only=True)
class BatchedRound:
    tokens_per_s: float
    tokens_per_s_in_decode: float
    decode_calls: int
    peers: dict[str, float] = spliced()  # batched_bench_{variant}: llama-batched-bench's speed


@dataclass(kw_only=True)
class LoglikRound:
    edgeeval_items_per_s: float
    edgeeval_items_per_s_in_decode: float
    perplexity_items_per_s: float
    perplexity_fa_off_items_per_s: float


@dataclass(kw_only=True)
class LetterPathProfile:
    mean_prompt_tokens: int
    fractions: dict[str, Spread] = spliced()  # fraction_vs_pp512, _pp512_fa_off, _pp{mean prompt tokens}_fa_off
    python_overhead: Spread
    runs: list[LetterRound]


@dataclass(kw_only=True)
class BatchedProfile:
    fractions: dict[str, Spread] = spliced()  # fraction_vs_{variant}
    python_overhead: Spread
    runs: list[BatchedRound]


@dataclass(kw_only=True)
class LoglikProfile:
    ratio_vs_perplexity: Spread
    ratio_vs_perplexity_fa_off: Spread
    python_overhead: Spread
    runs: list[LoglikRound]


@dataclass(kw_only=True)
class MissesProfile:
    machine: Machine
    threads: int
    rounds: int
    letter_path_gemma: LetterPathProfile
    batched_8_gemma: BatchedProfile
    loglik_smollm2: LoglikProfile
    load_average_end: tuple[float, float, float]


def profile_misses(args) -> MissesProfile:
    """The profile behind the demo models' three misses of the full run (gemma's letter path at 0.86 of pp512 and
    batched generation at 0.77 of llama-batched-bench at 8 sequences; SmolLM2's zero-shot loglik at 0.97x
    llama-perplexity): each measured `--rounds` times, edgeeval and its peer interleaved, with edgeeval's time
    inside llama_decode and the peer's variant that runs the kernels edgeeval runs."""
    ensure_peers()
    started = machine()
    items, _ = load_items()
    gemma, smollm2 = default_models()
    threads = args.threads
    letters, batched, loglik = [], [], []
    texts = [item["question"] for item in items]
    with tempfile.TemporaryDirectory(prefix="edgeeval-misses-") as tmp:
        for r in range(args.rounds):
            say("misses", f"round {r + 1}/{args.rounds}: gemma letter path, then llama-bench at pp512 and at its "
                "prompt length")
            letters.append(letter_round(gemma, threads, items))
            say("misses", f"round {r + 1}: gemma batched generation at 8 sequences, then llama-batched-bench variants")
            batched.append(batched_round(gemma, threads, texts))
            say("misses", f"round {r + 1}: SmolLM2 zero-shot loglik, llama-perplexity then edgeeval")
            loglik.append(loglik_round(smollm2, threads, items, Path(tmp)))
    return MissesProfile(machine=started, threads=threads, rounds=args.rounds,
                         letter_path_gemma=letter_profile(letters), batched_8_gemma=batched_profile(batched),
                         loglik_smollm2=loglik_profile(loglik), load_average_end=os.getloadavg())


def letter_round(gemma: str, threads: int, items: list[Item]) -> LetterRound:
    ours: LettersRun = run_child({"model": gemma, "threads": threads, "kind": "letters", "items": items, "n_ctx": 2048})
    length = round(ours["tokens_decoded"] / ours["n_items"])
    return LetterRound(tokens_per_s=ours["tokens_decoded"] / ours["seconds"],
                       tokens_per_s_in_decode=ours["tokens_decoded"] / ours["decode_seconds"],
                       mean_prompt_tokens=length, bench=prompt_bench(gemma, threads, [512, length]))


def batched_round(gemma: str, threads: int, texts: list[str]) -> BatchedRound:
    run: BatchedRun = run_child({"model": gemma, "threads": threads, "kind": "batched", "texts": texts, "pp": 256,
                                 "tg": 64, "sizes": [8], "one_at_a_time": False, "n_ctx": 8 * (256 + 64) + 256})
    eight = run["sizes"]["8"]
    tokens = eight["prompt_tokens"] + eight["generated"]
    return BatchedRound(tokens_per_s=tokens / eight["seconds"], tokens_per_s_in_decode=tokens / eight["decode_seconds"],
                        decode_calls=eight["decode_calls"],
                        peers={f"batched_bench_{name}": batched_bench(gemma, threads, 256, 64, (8,), extra)["8"].speed
                               for name, extra in BATCHED_VARIANTS.items()})


def loglik_round(smollm2: str, threads: int, items: list[Item], tmp: Path) -> LoglikRound:
    ppl = perplexity_mc(smollm2, items, "", threads, tmp)
    ours: LoglikRun = run_child({"model": smollm2, "threads": threads, "n_ctx": LOGLIK_CTX, "kind": "loglik",
                                 "items": items, "prefix": ""})
    off = perplexity_mc(smollm2, items, "", threads, tmp, ("-fa", "off"))
    return LoglikRound(edgeeval_items_per_s=len(items) / ours["seconds"],
                       edgeeval_items_per_s_in_decode=len(items) / ours["decode_seconds"],
                       perplexity_items_per_s=ppl.n_items / ppl.seconds,
                       perplexity_fa_off_items_per_s=off.n_items / off.seconds)


def letter_profile(letters: list[LetterRound]) -> LetterPathProfile:
    n = letters[0].mean_prompt_tokens
    return LetterPathProfile(
        mean_prompt_tokens=n,
        fractions={"fraction_vs_pp512": spread([r.tokens_per_s / r.bench["pp512_fa_on"] for r in letters]),
                   "fraction_vs_pp512_fa_off": spread([r.tokens_per_s / r.bench["pp512_fa_off"] for r in letters]),
                   f"fraction_vs_pp{n}_fa_off": spread([r.tokens_per_s / r.bench[f"pp{r.mean_prompt_tokens}_fa_off"]
                                                        for r in letters])},
        python_overhead=spread([1 - r.tokens_per_s / r.tokens_per_s_in_decode for r in letters]), runs=letters)


def batched_profile(batched: list[BatchedRound]) -> BatchedProfile:
    return BatchedProfile(
        fractions={f"fraction_vs_{name}": spread([r.tokens_per_s / r.peers[f"batched_bench_{name}"] for r in batched])
                   for name in BATCHED_VARIANTS},
        python_overhead=spread([1 - r.tokens_per_s / r.tokens_per_s_in_decode for r in batched]), runs=batched)


def loglik_profile(loglik: list[LoglikRound]) -> LoglikProfile:
    return LoglikProfile(
        ratio_vs_perplexity=spread([r.edgeeval_items_per_s / r.perplexity_items_per_s for r in loglik]),
        ratio_vs_perplexity_fa_off=spread([r.edgeeval_items_per_s / r.perplexity_fa_off_items_per_s for r in loglik]),
        python_overhead=spread([1 - r.edgeeval_items_per_s / r.edgeeval_items_per_s_in_decode for r in loglik]),
        runs=loglik)


# --- divergence ----------------------------------------------------------------------------------

@dataclass(kw_only=True)
class Flip:
    """A position where the multi-token decode's greedy token differs from plain greedy's."""

    task: str
    id: str
    position: int
    at: Position = spliced()  # the child's entry for the position: flip, margin, max_abs_delta, gap_moved


@dataclass(kw_only=True)
class LogitDelta:
    median: float
    max: float


@dataclass(kw_only=True)
class Divergence:
    model: str
    chunk: int
    flash_attn: bool
    answers: int
    positions: int
    positions_with_another_token: int
    answers_with_another_token: int
    max_abs_logit_delta: LogitDelta
    share_of_positions_with_margin_below_median_delta: float
    flips: list[Flip]


def divergence_profile(args) -> list[Divergence]:
    """Why speculative answers can part from plain greedy ones, measured without any drafting: on both demo models
    and every bundled generation task (`--spec-limit` examples each), plain greedy's tokens decoded one at a time
    against the same tokens decoded 1 (control) and n_draft + 1 at a time. Every position where the greedy token
    differs is listed with plain's top-two margin there and how far the wider decode moved that gap."""
    out = []
    for model in default_models():
        prompts = divergence_prompts(model, args)
        for chunk in (1, args.n_draft + 1):
            say("divergence", f"{Path(model).name}: {len(prompts)} answers decoded {chunk} token(s) at a time")
            runs = [divergence_run(model, args, chunk, text, max_tokens) for _, _, text, max_tokens in prompts]
            out.append(summarize_divergence(Path(model).name, chunk, args.flash_attn, prompts, runs))
    return out


def divergence_prompts(model: str, args) -> list[tuple[str, str, str, int]]:
    """(task, example id, prompt, max_tokens) of `--spec-limit` examples of every bundled generation task."""
    prompts = []
    for task in SUMMARY_TASKS + OTHER_GENERATION_TASKS:
        texts, ids, _ = runner_prompts(model, task, args.spec_limit)
        max_tokens = min(task_spec(task).max_tokens, args.spec_max_tokens)
        prompts += [(task, i, t, max_tokens) for i, t in zip(ids, texts)]
    return prompts


def divergence_run(model: str, args, chunk: int, text: str, max_tokens: int) -> DivergenceAnswer:
    return run_child({"model": model, "threads": args.threads, "n_ctx": 4096, "kind": "divergence", "chunk": chunk,
                      "prompts": [text], "max_tokens": max_tokens, "flash_attn": args.flash_attn})["prompts"][0]


def summarize_divergence(name: str, chunk: int, flash_attn: bool, prompts: list[tuple[str, str, str, int]],
                         runs: list[DivergenceAnswer]) -> Divergence:
    flips = [Flip(task=task, id=i, position=n, at=p) for (task, i, _, _), run in zip(prompts, runs)
             for n, p in enumerate(run["positions"]) if p["flip"]]
    deltas = [p["max_abs_delta"] for run in runs for p in run["positions"]]
    margins = [p["margin"] for run in runs for p in run["positions"]]
    median = statistics.median(deltas)
    return Divergence(model=name, chunk=chunk, flash_attn=flash_attn, answers=len(runs), positions=len(deltas),
                      positions_with_another_token=len(flips),
                      answers_with_another_token=len({(f.task, f.id) for f in flips}),
                      max_abs_logit_delta=LogitDelta(median=median, max=max(deltas)),
                      share_of_positions_with_margin_below_median_delta=sum(m < median for m in margins) / len(margins),
                      flips=flips)
