"""The Qwen 1.5B section: prompt lookup and 0.5B drafting against plain greedy (and against llama-speculative),
one sequence against llama-bench, the batched curve with the --parallel auto choice, the 8B projection; and
prompt lookup against plain greedy on the demo models (the equality check)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .children import BatchedRun, LettersRun, SpeculativeExample, SpeculativeRun, TgRun, run_child
from .common import BATCH_SIZES, HERE, first_difference, say
from .inputs import (
    OTHER_GENERATION_TASKS,
    SUMMARY_TASKS,
    default_models,
    extra_models,
    load_items,
    runner_prompts,
    task_spec,
)
from .jsonable import optional, to_json
from .peers import batched_bench, edgeeval_repacks, llama_bench, llama_speculative, peer_bin

LLAMA3_8B_NAME = "Llama-3-8B-Instruct Q4_K_M"
LLAMA3_8B_PARAMS = 8.03e9
QWEN_15B_PARAMS = 1.54e9


@dataclass(kw_only=True)
class SpeculativeDiffering:
    id: str
    first_difference: int
    plain: str
    speculative: str


@dataclass(kw_only=True)
class TaskSpeculation:
    """Plain greedy against the speculative method on one task's examples."""

    n: int
    max_tokens: int
    plain_tokens_per_s: float
    speculative_tokens_per_s: float
    speedup: float
    drafted: int
    accepted: int
    speculative_tokens: int
    speculative_seconds: float
    prompt_seconds: float
    draft_prompt_seconds: float
    speedup_with_prompts: float
    acceptance: float | None
    same: int
    differing: list[SpeculativeDiffering]
    load_average: float


@dataclass(kw_only=True)
class SpeculationResult:
    """Per task, and pooled: the speed-up (geometric mean over tasks), acceptance and share of equal answers."""

    model: str | None = optional()  # named in the demo models' equality check
    method: str
    draft: str | None
    tasks: dict[str, TaskSpeculation]
    speedup: float
    acceptance: float
    same_rate: float


@dataclass(kw_only=True)
class PeerFailure:
    error: str


@dataclass(kw_only=True)
class SingleSequence:
    pp_tokens_per_s: float
    tg_tokens_per_s: float
    llama_bench_pp512: float | None = optional()  # when llama-bench is built
    llama_bench_tg128: float | None = optional()
    pp_fraction: float | None = optional()
    tg_fraction: float | None = optional()


@dataclass(kw_only=True)
class AutoBatched:
    pp: int
    tg: int
    edgeeval_tokens_per_s: dict[str, float]
    edgeeval_total_tokens_per_s: dict[str, float]
    auto: int
    load_average: float
    batched_bench_tokens_per_s: dict[str, float] | None = optional()  # when llama-batched-bench is built
    batched_bench_tg_tokens_per_s: dict[str, float] | None = optional()
    fraction_of_batched_bench: dict[str, float] | None = optional()


@dataclass(kw_only=True)
class Projection:
    model: str
    parameter_ratio: float
    prompt_tokens_per_s: float
    gen_tokens_per_s: float
    parallel_auto_gain: float
    examples: float
    prompt_tokens: float
    generated_tokens: float
    hours_parallel_1: float
    hours_parallel_auto: float
    assumptions: str | None


@dataclass(kw_only=True)
class RealisticFields:
    """The section's fields of the summary line (and of results.json's summary): those measured this run."""

    lookup_speedup: float | None = optional()
    draft_speedup: float | None = optional()
    ratio_vs_llama_speculative: float | None = optional()
    parallel_auto: int | None = optional()
    auto_speedup: float | None = optional()


def measure_realistic(args, results: dict) -> RealisticFields | None:
    """The Qwen 1.5B section: prompt lookup and 0.5B drafting vs plain greedy (and vs llama-speculative),
    and the batched curve with the --parallel auto choice. Returns the summary fields it measured."""
    pair = extra_models()
    if pair is None:
        return None
    target, draft = pair
    # The parts measured now replace their own entries; the others (from an earlier run) stay.
    section: dict = results.setdefault("realistic", {})
    section.update({"model": Path(target).name, "draft_model": Path(draft).name, "repack": edgeeval_repacks()})
    fields = RealisticFields()
    if "lookup" in args.parts:
        lookup = speculative_run(target, args, SUMMARY_TASKS, "lookup", args.spec_limit)
        section["lookup"] = to_json(lookup)
        fields.lookup_speedup = lookup.speedup
    if "draft" in args.parts:
        measure_drafting(target, draft, args, section, fields)
    if "single" in args.parts:
        section["single"] = to_json(measure_single(target, args))
    if "batched" in args.parts:
        batched = measure_auto_batched(target, args)
        section["batched"] = to_json(batched)
        fields.parallel_auto = batched.auto
        fields.auto_speedup = batched.edgeeval_tokens_per_s[str(batched.auto)] / batched.edgeeval_tokens_per_s["1"]
    if "single" in section and "batched" in section:
        section["projection_8b"] = to_json(projection_8b(section))
    section["summary"] = {**section.get("summary", {}), **to_json(fields)}
    return fields


# --- speculative decoding ------------------------------------------------------------------------

def speculative_run(model: str, args, tasks: tuple[str, ...], method: str, limit: int,
                    draft: str | None = None) -> SpeculationResult:
    """Plain greedy vs `method` on the bundled examples of `tasks` (the runner's prompts): tokens/s of
    the answers, acceptance, and every answer that differs with the first character where it does."""
    per_task = {}
    for task in tasks:
        prompts, ids, _ = runner_prompts(model, task, limit)
        spec = task_spec(task)
        max_tokens = min(spec.max_tokens, args.spec_max_tokens)
        say(Path(model).name, f"{method} vs plain on {task} ({len(prompts)} examples, load {os.getloadavg()[0]:.1f})")
        res: SpeculativeRun = run_child({"model": model, "draft": draft, "threads": args.threads, "n_ctx": 4096,
                                         "n_draft": args.n_draft, "kind": "speculative", "prompts": prompts,
                                         "max_tokens": max_tokens, "stop": list(spec.stop), "method": method})
        per_task[task] = task_speculation(res["examples"], ids, max_tokens)
    return SpeculationResult(
        method=method, draft=Path(draft).name if draft else None, tasks=per_task, speedup=_pooled(per_task),
        acceptance=sum(t.accepted for t in per_task.values()) / max(1, sum(t.drafted for t in per_task.values())),
        same_rate=sum(t.same for t in per_task.values()) / max(1, sum(t.n for t in per_task.values())))


def task_speculation(examples: list[SpeculativeExample], ids: list[str], max_tokens: int) -> TaskSpeculation:
    plain_s = sum(e["plain"]["seconds"] for e in examples)
    spec_s = sum(e["speculative"]["seconds"] for e in examples)
    drafted = sum(e["speculative"].get("drafted", 0) for e in examples)
    accepted = sum(e["speculative"].get("accepted", 0) for e in examples)
    return TaskSpeculation(
        n=len(examples), max_tokens=max_tokens,
        plain_tokens_per_s=sum(e["plain"]["tokens"] for e in examples) / plain_s,
        speculative_tokens_per_s=sum(e["speculative"]["tokens"] for e in examples) / spec_s,
        speedup=plain_s / spec_s, drafted=drafted, accepted=accepted,
        speculative_tokens=sum(e["speculative"]["tokens"] for e in examples), speculative_seconds=spec_s,
        prompt_seconds=sum(e["prompt_seconds"] for e in examples),
        draft_prompt_seconds=sum(e["draft_prompt_seconds"] for e in examples),
        # An evaluation pays for the prompts too: the target's in both paths, the draft model's as well.
        speedup_with_prompts=(plain_s + sum(e["prompt_seconds"] for e in examples))
        / (spec_s + sum(e["prompt_seconds"] + e["draft_prompt_seconds"] for e in examples)),
        acceptance=accepted / drafted if drafted else None,
        same=sum(e["plain"]["text"] == e["speculative"]["text"] for e in examples),
        differing=[SpeculativeDiffering(id=i, first_difference=first_difference(e["plain"]["text"],
                                                                                e["speculative"]["text"]),
                                        plain=e["plain"]["text"], speculative=e["speculative"]["text"])
                   for i, e in zip(ids, examples) if e["plain"]["text"] != e["speculative"]["text"]],
        load_average=os.getloadavg()[0])


def _pooled(tasks: dict[str, TaskSpeculation]) -> float:
    """The geometric mean of the speed-ups over tasks (each task weighs the same, whatever its answer lengths)."""
    values = [t.speedup for t in tasks.values()]
    product = 1.0
    for v in values:
        product *= v
    return product ** (1 / len(values)) if values else float("nan")


def _pooled_rate(tasks: dict[str, TaskSpeculation]) -> float:
    """Tokens per second of the speculative answers over all tasks together."""
    return sum(t.speculative_tokens for t in tasks.values()) / sum(t.speculative_seconds for t in tasks.values())


def measure_drafting(target: str, draft: str, args, section: dict, fields: RealisticFields) -> None:
    """0.5B drafting against plain greedy, then llama-speculative on the same pair when it is built."""
    tasks = SUMMARY_TASKS + ("case_challenges",)
    drafting = speculative_run(target, args, tasks, "draft", args.spec_limit, draft=draft)
    section["draft"] = to_json(drafting)
    fields.draft_speedup = drafting.speedup
    if not peer_bin("llama-speculative").exists():
        return
    try:  # a peer that fails (its options change between llama.cpp versions) costs its figure only
        peer = llama_speculative(target, draft, args, tasks, args.spec_limit)
    except RuntimeError as exc:
        section["llama_speculative"] = to_json(PeerFailure(error=str(exc)[-2000:]))
        print(f"llama-speculative failed; no peer ratio: {str(exc).splitlines()[0]}", file=sys.stderr)
    else:
        section["llama_speculative"] = to_json(peer)
        fields.ratio_vs_llama_speculative = _pooled_rate(drafting.tasks) / peer.tokens_per_s


def equality_on_demo_models(args) -> list[SpeculationResult]:
    """Prompt lookup vs plain greedy on every bundled generation task, on both demo models."""
    out = []
    for model in default_models():
        run = speculative_run(model, args, SUMMARY_TASKS + OTHER_GENERATION_TASKS, "lookup", args.spec_limit)
        out.append(dataclasses.replace(run, model=Path(model).name))
    return out


# --- one sequence and --parallel auto ------------------------------------------------------------

def measure_single(target: str, args) -> SingleSequence:
    # One sequence: prompt processing (the letter path over the case challenges) and generation (128
    # tokens), against llama-bench pp512 / tg128, repacking weights as edgeeval does on this CPU.
    letters: LettersRun = run_child({"model": target, "threads": args.threads, "n_ctx": 2048, "kind": "letters",
                                     "items": load_items()[0]})
    tg: TgRun = run_child({"model": target, "threads": args.threads, "n_ctx": 2048, "kind": "tg", "n_gen": 128,
                           "repeats": 2})
    single = SingleSequence(pp_tokens_per_s=letters["tokens_decoded"] / letters["seconds"],
                            tg_tokens_per_s=tg["tokens_per_s"])
    if peer_bin("llama-bench").exists():
        bench = llama_bench(target, args.threads, 2, ("--repack", "1" if edgeeval_repacks() else "0"))
        single.llama_bench_pp512, single.llama_bench_tg128 = bench.pp512, bench.tg128
        single.pp_fraction = single.pp_tokens_per_s / bench.pp512
        single.tg_fraction = single.tg_tokens_per_s / bench.tg128
    return single


def measure_auto_batched(target: str, args) -> AutoBatched:
    from edgeeval.config.gguf import read_gguf_metadata
    from edgeeval.engine.batching import auto_parallel
    from edgeeval.engine.memory import kv_cache_bytes

    pp, tg = 128, 32 if args.quick else 64
    texts = [item["question"] for item in load_items()[0]]
    ours: BatchedRun = run_child({"model": target, "threads": args.threads, "n_ctx": 4096, "kind": "batched",
                                  "texts": texts[: max(BATCH_SIZES)], "pp": pp, "tg": tg, "sizes": list(BATCH_SIZES)})
    sizes = ours["sizes"]
    # Generated tokens per second (what --parallel buys an evaluation) and, as llama-batched-bench
    # counts its "speed", prompt and generated tokens together per second (what the peer is compared on).
    curve = {n: sizes[n]["generated"] / sizes[n]["seconds"] for n in sizes}
    total = {n: (sizes[n]["prompt_tokens"] + sizes[n]["generated"]) / sizes[n]["seconds"] for n in sizes}
    auto = auto_parallel(os.path.getsize(target), kv_cache_bytes(read_gguf_metadata(target).metadata, 4096),
                         args.threads)
    batched = AutoBatched(pp=pp, tg=tg, edgeeval_tokens_per_s=curve, edgeeval_total_tokens_per_s=total, auto=auto,
                          load_average=os.getloadavg()[0])
    if peer_bin("llama-batched-bench").exists():
        peer = batched_bench(target, args.threads, pp, tg, BATCH_SIZES, () if edgeeval_repacks() else ("-nr",))
        batched.batched_bench_tokens_per_s = {n: peer[n].speed for n in peer}
        batched.batched_bench_tg_tokens_per_s = {n: peer[n].speed_tg for n in peer}
        batched.fraction_of_batched_bench = {n: total[n] / peer[n].speed for n in peer if n in total}
    return batched


def projection_8b(section: dict) -> Projection:
    """The study's task suite for one 8B pair (both models) on this machine: the 1.5B's measured one-sequence
    throughputs divided by the parameter ratio (8.03B / 1.54B), the suite's sizes and prompt lengths those
    of benchmarks/scale (results.json, `paper`), half of each task's max_tokens generated; with --parallel 1,
    and with --parallel auto, whose gain on generation is the 1.5B's measured one at its auto choice.
    Prompt lookup and drafting are left out: they did not pay here (see the lookup and draft entries)."""
    from edgeeval.config.locations import BUILTIN_ROOT
    from edgeeval.config.tasks import load_task

    paper = json.loads((HERE.parent / "scale" / "results.json").read_text())["paper"]
    scale = LLAMA3_8B_PARAMS / QWEN_15B_PARAMS
    pp, tg = section["single"]["pp_tokens_per_s"] / scale, section["single"]["tg_tokens_per_s"] / scale
    batched = section["batched"]
    gain = batched["edgeeval_tokens_per_s"][str(batched["auto"])] / batched["edgeeval_tokens_per_s"]["1"]
    share = paper["generated_share_of_max_tokens"]
    examples = prompt_tokens = generated = 0.0
    for task, size in paper["tasks"].items():
        max_tokens = load_task(BUILTIN_ROOT / "benchmarks" / "clinical" / f"{task}.toml").max_tokens
        examples += 2 * size["examples"]
        prompt_tokens += 2 * size["examples"] * size["prompt_tokens"]
        generated += 2 * size["examples"] * max_tokens * share
    hours_plain = (prompt_tokens / pp + generated / tg) / 3600
    hours_auto = (prompt_tokens / pp + generated / (tg * gain)) / 3600
    return Projection(model=LLAMA3_8B_NAME, parameter_ratio=scale, prompt_tokens_per_s=pp,
                      gen_tokens_per_s=tg, parallel_auto_gain=gain, examples=examples, prompt_tokens=prompt_tokens,
                      generated_tokens=generated, hours_parallel_1=hours_plain, hours_parallel_auto=hours_auto,
                      assumptions=projection_8b.__doc__)
