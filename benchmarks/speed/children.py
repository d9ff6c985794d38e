"""One measurement of edgeeval's engine per child process (`run.py --child SPEC`), so that its peak RSS is its
own. The child side (child_main and the kinds) runs in the fresh interpreter; run_child starts it. What a child
prints is JSON: the TypedDicts below say its shape, and the parent reads it as such."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, TypedDict

from .common import RUN_PY
from .inputs import Item, letter_prompt
from .processes import run_timed


class ChildSpec(TypedDict, total=False):
    """What the parent asks of a child: the model and settings, `kind`, and that kind's own keys."""

    model: str
    threads: int
    n_ctx: int
    kind: str
    n_seq_max: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    draft: str | None
    n_draft: int
    items: list[Item]
    prefix: str
    n_gen: int
    repeats: int
    texts: list[str]
    pp: int
    tg: int
    sizes: list[int]
    one_at_a_time: bool
    prompts: list[str]
    max_tokens: int
    n_parallel: int
    stop: list[str]
    method: str
    chunk: int
    order: list[int]
    prefixes: list[int]


class Settings(TypedDict):
    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_seq_max: int
    flash_attn: bool


class Measured(TypedDict, total=False):
    settings: Settings  # the engine's resolved settings (child_main adds them)
    peak_rss_mb: float  # the child's peak RSS (run_child adds it)


class OptionScore(TypedDict):
    logprob: float
    n_tokens: int
    token_logprobs: list[float]
    error: str | None


class LoglikRun(Measured):
    seconds: float
    n_items: int
    decode_seconds: float
    prompt_tokens: int
    prompt_tokens_decoded: int
    scores: list[list[OptionScore]]
    option_tokens: list[list[list[int]]]


class LettersRun(Measured):
    seconds: float
    n_items: int
    tokens_decoded: int
    prompt_tokens: int
    decode_seconds: float
    picks: list[int]


class TgRound(TypedDict):
    tokens: int
    seconds: float


class TgRun(Measured):
    tokens: int
    seconds: float
    tokens_per_s: float
    runs: list[TgRound]


class BatchedSize(TypedDict):
    seconds: float
    generated: int
    prompt_tokens: int
    decode_seconds: float
    decode_calls: int
    texts: list[str]


class OneAtATime(TypedDict):
    seconds: float
    n: int
    generated: int
    prompt_tokens: int
    texts: list[str]


class _BatchedOptional(Measured, total=False):
    one_at_a_time: OneAtATime  # unless the spec says one_at_a_time: false


class BatchedRun(_BatchedOptional):
    pp_mean: float
    sizes: dict[str, BatchedSize]


class MatchRun(Measured):
    batched: list[str]
    single: list[str]


class SpeculativeAnswer(TypedDict, total=False):
    seconds: float
    tokens: int
    text: str
    drafted: int  # with the engine's speculative notes (speculative answers only)
    accepted: int


class SpeculativeExample(TypedDict):
    prompt_seconds: float
    draft_prompt_seconds: float
    plain: SpeculativeAnswer
    speculative: SpeculativeAnswer


class SpeculativeRun(Measured):
    examples: list[SpeculativeExample]


class Position(TypedDict):
    flip: bool
    margin: float
    max_abs_delta: float
    gap_moved: float


class DivergenceAnswer(TypedDict):
    n_tokens: int
    positions: list[Position]


class DivergenceRun(Measured):
    prompts: list[DivergenceAnswer]


# --- the child side ------------------------------------------------------------------------------

def child_main(spec: ChildSpec) -> dict[str, Any]:
    from edgeeval.engine import EngineSettings
    from edgeeval.engine.llama import LlamaModel

    settings = EngineSettings(n_ctx=spec["n_ctx"], n_threads=spec["threads"], n_seq_max=spec.get("n_seq_max", 32),
                              n_batch=spec.get("n_batch", 512), n_ubatch=spec.get("n_ubatch", 512),
                              flash_attn=spec.get("flash_attn", False), draft_model=spec.get("draft"),
                              n_draft=spec.get("n_draft", 8)).resolved()
    model = LlamaModel(spec["model"], settings)
    try:
        return {**CHILD_KINDS[spec["kind"]](model, spec), "settings": {
            "n_ctx": settings.n_ctx, "n_batch": settings.n_batch, "n_ubatch": settings.n_ubatch,
            "n_threads": settings.n_threads, "n_seq_max": settings.n_seq_max, "flash_attn": settings.flash_attn}}
    finally:
        model.close()


def child_loglik(model, spec: ChildSpec) -> LoglikRun:
    items = [(spec["prefix"] + item["question"], [" " + o for o in item["options"]]) for item in spec["items"]]
    model.loglikelihood_many(items[:1])  # warm-up: page the weights in, as any second call would find them
    model.loglikelihood_many([("warm up", [" a", " b"])])  # and forget that item's prefix again
    before = dict(model.counters)
    start = time.perf_counter()
    scores = model.loglikelihood_many(items)
    seconds = time.perf_counter() - start
    after = model.counters
    return {"seconds": seconds, "n_items": len(items),
            "decode_seconds": after["decode_seconds"] - before["decode_seconds"],
            "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
            "prompt_tokens_decoded": after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"],
            "scores": [[s.model_dump(mode="json", include={"logprob", "n_tokens", "token_logprobs", "error"})
                        for s in item] for item in scores],
            "option_tokens": [[model.split_tokens(c, o)[0] for o in opts] for c, opts in items]}


def child_letters(model, spec: ChildSpec) -> LettersRun:
    prompts = [letter_prompt(item) for item in spec["items"]]
    letters = [[" " + letter for letter in item["letters"]] for item in spec["items"]]
    model.letter_logprobs(prompts[0], letters[0])
    model.letter_logprobs("warm up", [" A"])
    before = dict(model.counters)
    start = time.perf_counter()
    picks = []
    for prompt, options in zip(prompts, letters):
        logprobs = model.letter_logprobs(prompt, options)
        picks.append(max(range(len(options)), key=lambda i: logprobs[options[i]]))
    seconds = time.perf_counter() - start
    decoded = model.counters["prompt_tokens_decoded"] - before["prompt_tokens_decoded"]
    return {"seconds": seconds, "n_items": len(prompts), "tokens_decoded": decoded,
            "prompt_tokens": model.counters["prompt_tokens"] - before["prompt_tokens"],
            "decode_seconds": model.counters["decode_seconds"] - before["decode_seconds"], "picks": picks}


def child_tg(model, spec: ChildSpec) -> TgRun:
    """Generation speed of one sequence: 128 tokens after a short prompt, less the prompt's share."""
    prompt = "The patient is a 58-year-old man with chest pain. Describe the workup in detail:"
    model.generate(prompt, 8, [])
    runs: list[TgRound] = []
    for _ in range(spec.get("repeats", 2)):
        model.generate("x", 1, [])  # a different prompt, so the next one is decoded from scratch
        t0 = time.perf_counter()
        one = model.generate(prompt, 1, [])
        t1 = time.perf_counter()
        model.generate("x", 1, [])
        t2 = time.perf_counter()
        full = model.generate(prompt, spec["n_gen"], [], ignore_eos=True)
        t3 = time.perf_counter()
        runs.append({"tokens": full.n_output_tokens - one.n_output_tokens, "seconds": (t3 - t2) - (t1 - t0)})
    best = max(runs, key=lambda r: r["tokens"] / r["seconds"])
    return {**best, "tokens_per_s": best["tokens"] / best["seconds"], "runs": runs}


def child_batched(model, spec: ChildSpec) -> BatchedRun:
    """generate_many with PL prompts of ~P tokens each (no common prefix), T tokens each; and the
    same prompts one at a time."""
    prompts = batched_prompts(model, spec["texts"], spec["pp"])
    n_prompt = [len(model.tokenize(p)) for p in prompts]
    model.generate_many(prompts[:2], 4, [])
    out: BatchedRun = {"pp_mean": sum(n_prompt) / len(n_prompt), "sizes": {}}
    for pl in spec["sizes"]:
        batch = prompts[:pl]
        model.generate("x", 1, [])
        before = dict(model.counters)
        t0 = time.perf_counter()
        gens = model.generate_many(batch, spec["tg"], [], n_parallel=pl, ignore_eos=True)
        seconds = time.perf_counter() - t0
        out["sizes"][str(pl)] = {"seconds": seconds, "generated": sum(g.n_output_tokens for g in gens),
                                 "prompt_tokens": sum(n_prompt[:pl]),
                                 "decode_seconds": model.counters["decode_seconds"] - before["decode_seconds"],
                                 "decode_calls": model.counters["decode_calls"] - before["decode_calls"],
                                 "texts": [g.text for g in gens]}
    if not spec.get("one_at_a_time", True):
        return out
    singles = []
    t0 = time.perf_counter()
    n_single = max(spec["sizes"])
    for prompt in prompts[:n_single]:
        model.generate("x", 1, [])
        singles.append(model.generate(prompt, spec["tg"], [], ignore_eos=True))
    out["one_at_a_time"] = {"seconds": time.perf_counter() - t0, "n": n_single,
                            "generated": sum(g.n_output_tokens for g in singles),
                            "prompt_tokens": sum(n_prompt[:n_single]), "texts": [g.text for g in singles]}
    return out


def child_match(model, spec: ChildSpec) -> MatchRun:
    """Greedy answers to the case-challenge prompts: batched vs one at a time."""
    prompts = spec["prompts"]
    batched = model.generate_many(prompts, spec["max_tokens"], [], n_parallel=spec["n_parallel"])
    single = [model.generate(p, spec["max_tokens"], []) for p in prompts]
    return {"batched": [g.text for g in batched], "single": [g.text for g in single]}


def batched_prompts(model, texts: list[str], pp: int) -> list[str]:
    """Prompts of about `pp` tokens (distinct texts cut at a token boundary, BOS included)."""
    out = []
    for text in texts:
        tokens = model.tokenize(text)
        while len(tokens) < pp:
            tokens += model.tokenize(" " + text)[1:]
        body = b"".join(model.piece(t) for t in tokens[1:pp])
        out.append(body.decode("utf-8", errors="ignore"))
    return out


def child_speculative(model, spec: ChildSpec) -> SpeculativeRun:
    """Per prompt: the prompt's time (prompt + 1 token, from an empty cache), then plain greedy and the
    speculative method, each from the cached prompt, so each time is the answer's own; the order of the
    two alternates from prompt to prompt, so a drift in the machine's speed hits both alike."""
    out: list[SpeculativeExample] = []
    for i, prompt in enumerate(spec["prompts"]):
        model.generate("x", 1, [])
        t0 = time.perf_counter()
        model.generate(prompt, 1, spec["stop"])
        prompt_s = time.perf_counter() - t0
        draft_prompt_s = 0.0
        if model.draft is not None:
            # The draft model reads the prompt too, once: timed here beside the target's, so the answers'
            # times below are generation only for both models (as llama-speculative's "decoded" figure).
            model.draft.generate("x", 1, [])
            t0 = time.perf_counter()
            model.draft.feed_prompt(model.tokenize(prompt))
            draft_prompt_s = time.perf_counter() - t0
        runs: dict[str, SpeculativeAnswer] = {}
        for method in (("none", spec["method"]) if i % 2 == 0 else (spec["method"], "none")):
            t0 = time.perf_counter()
            g = model.generate(prompt, spec["max_tokens"], spec["stop"], speculative=method)
            runs[method] = {"seconds": time.perf_counter() - t0, "tokens": g.n_output_tokens, "text": g.text,
                            **(g.notes.get("speculative") or {})}
        out.append({"prompt_seconds": prompt_s, "draft_prompt_seconds": draft_prompt_s, "plain": runs["none"],
                    "speculative": runs[spec["method"]]})
    return {"examples": out}


def child_divergence(model, spec: ChildSpec) -> DivergenceRun:
    """Per prompt: plain greedy's tokens, each decoded alone with its row of logits kept; then the same tokens
    decoded `chunk` at a time with every row's logits (the shape of a verification that keeps the whole draft).
    Per position: whether the two rows' greedy tokens differ, plain's margin between its top two logits, and how
    far the multi-token decode moved the logits. With chunk 1 both paths are the same computation (a control)."""
    import numpy as np

    out: list[DivergenceAnswer] = []
    for prompt in spec["prompts"]:
        tokens = model.tokenize(prompt)
        model.generate("x", 1, [])
        model.feed_prompt(tokens)
        plain, chosen = [], []
        for _ in range(spec["max_tokens"]):
            row = model.logits(-1).copy()
            plain.append(row)
            chosen.append(int(np.argmax(row)))
            if model.is_end(chosen[-1]):
                break
            model.append_tokens([chosen[-1]])
        model.generate("x", 1, [])
        model.feed_prompt(tokens)
        batched = [model.logits(-1).copy()]
        forced = chosen[:-1]
        for begin in range(0, len(forced), spec["chunk"]):
            part = forced[begin : begin + spec["chunk"]]
            model.append_every_row(part)  # the engine's verification decode
            batched += [model.logits(index).copy() for index in range(len(part))]
        positions: list[Position] = []
        for i, (a_row, b_row) in enumerate(zip(plain, batched)):
            top2 = np.partition(a_row, -2)[-2:]
            a, b = chosen[i], int(np.argmax(b_row))
            positions.append({"flip": a != b, "margin": float(top2[1] - top2[0]),
                              "max_abs_delta": float(np.max(np.abs(a_row - b_row))),
                              # how much the batch moved the gap between plain's token and the batch's choice
                              "gap_moved": float((a_row[a] - a_row[b]) - (b_row[a] - b_row[b])) if a != b else 0.0})
        out.append({"n_tokens": len(positions), "positions": positions})
    return {"prompts": out}


def _suite_kinds() -> dict[str, Callable[[Any, ChildSpec], Any]]:
    from .suite import child_layouts, child_suite

    return {"suite": child_suite, "layouts": child_layouts}


CHILD_KINDS: dict[str, Callable[[Any, ChildSpec], Any]] = {
    "loglik": child_loglik, "letters": child_letters, "tg": child_tg, "batched": child_batched,
    "match": child_match, "speculative": child_speculative, "divergence": child_divergence, **_suite_kinds()}


# --- the parent side -----------------------------------------------------------------------------

def run_child(spec: ChildSpec) -> Any:
    """A child measurement in a fresh interpreter; returns its result (the TypedDict of its kind) and its peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    try:
        out, _, rss = run_timed([sys.executable, str(RUN_PY), "--child", handle.name], merge_stderr=False)
    finally:
        os.unlink(handle.name)
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": rss}
