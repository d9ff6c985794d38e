"""Answering: a model's pending units in chunks of one engine call each, and the record of every answer. The
local runner and the Ray actors both answer through here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from edgeeval import kinds
from edgeeval.engine import DraftMethod, Engine, EngineError, EngineSettings, Generation, OptionScore
from edgeeval.engine.batching import auto_parallel
from edgeeval.engine.memory import kv_cache_bytes
from edgeeval.kinds.base import best_option
from edgeeval.run.planning import PreparedModel, PreparedTask, Unit
from edgeeval.run.store import Record, failure_fields, now_iso
from edgeeval.types import ErrorKind

LOGLIK_CHUNK = 8
"""Items per scoring call in loglik mode: packed into shared batches, and what a native crash costs at most."""
GENERATE_CHUNK_PER_SEQUENCE = 4
"""With --parallel N, prompts per generate_many call: 4N keeps N sequences busy between refills."""


def engine_calls(pending: list[tuple[PreparedTask, Unit]],
                 parallel: int) -> Iterator[tuple[PreparedTask, list[Unit]]]:
    """Consecutive units of one task, as many as one engine call takes: one (generation), 4 x parallel
    (batched generation) or LOGLIK_CHUNK (loglik scoring)."""
    i = 0
    while i < len(pending):
        task = pending[i][0]
        size = (LOGLIK_CHUNK if task.mode == "loglik"
                else GENERATE_CHUNK_PER_SEQUENCE * parallel if parallel > 1 else 1)
        units: list[Unit] = []
        while i < len(pending) and pending[i][0] is task and len(units) < size:
            units.append(pending[i][1])
            i += 1
        yield task, units


def answer(engine: Engine, model: PreparedModel, task: PreparedTask, units: list[Unit], parallel: int,
           speculative: DraftMethod | None = None) -> Iterator[Record]:
    """The records of one engine call's units, in order (units that cannot be sent become error records)."""
    ready = [u for u in units if u.failure is None]
    if task.mode == "loglik":
        scored = dict(zip(map(id, ready), _score_units(engine, task, ready)))
        for unit in units:
            scores, seconds = scored.get(id(unit), ([], 0.0))
            yield loglik_record(model, task, unit, scores, seconds)
        return
    spec = task.spec

    def one_at_a_time() -> list[Generation]:
        return [engine.generate(u.prompt, spec.max_tokens, list(spec.stop), speculative=speculative) for u in ready]

    if parallel > 1 and len(ready) > 1:
        gens = engine.generate_many([u.prompt for u in ready], spec.max_tokens, list(spec.stop), n_parallel=parallel,
                                    speculative=speculative)
        if all(g.failure is not None and g.failure.kind is ErrorKind.NATIVE_CRASH for g in gens):
            gens = one_at_a_time()  # the batch crashed twice: now a crash costs its own unit only
    else:
        gens = one_at_a_time()
    results = dict(zip(map(id, ready), gens))
    for unit in units:
        gen = results.get(id(unit)) or Generation(text=None, finish_reason="error", failure=unit.failure)
        yield generation_record(model, task, unit, gen)


def parallel_for(model: PreparedModel, settings: EngineSettings) -> int:
    """`--parallel auto`: the rule of engine/batching.py for this model file, context and threads (the
    fake engine has no batch speed-up: one at a time, where a kill loses one unit, not a chunk)."""
    if settings.backend == "fake":
        return 1
    kv = kv_cache_bytes(model.gguf.metadata, model.n_ctx)
    return auto_parallel(model.path.stat().st_size, kv, settings.resolved().n_threads)


def speculative_for(task: PreparedTask, settings: EngineSettings) -> DraftMethod | None:
    """How a generation task drafts: the draft model when there is one, prompt lookup for kinds whose
    answers copy the prompt (or every task with --speculative lookup), else not at all."""
    if task.mode != "generate":
        return None
    if settings.draft_model:
        return "draft"
    if settings.speculative == "none":
        return None
    if settings.speculative == "lookup" or kinds.get(task.spec.kind).copies_input:
        return "lookup"
    return None


# --- records -----------------------------------------------------------------------------------------------

def _unit_fields(model: PreparedModel, task: PreparedTask, unit: Unit) -> dict[str, Any]:
    """What every record of a unit holds whatever the engine answered: whose, which task and example, the
    prompt as sent and what shaped it, and gold."""
    return {"model": model.name, "model_sha256": model.sha256, "task": task.run_name, "task_hash": task.hash,
            "example_id": unit.example.id, "repeat": unit.example.repeat, "prompt_hash": unit.prompt_hash, "prompt": unit.prompt,
            "gold": unit.example.gold, "options": unit.example.fields.get("options"),
            "rotation": unit.example.rotation,
            "option_order": list(unit.example.option_order) if unit.example.option_order is not None else None,
            "truncation": unit.truncation, "retrieval": unit.retrieval, "created": now_iso()}


def generation_record(model: PreparedModel, task: PreparedTask, unit: Unit, gen: Generation) -> Record:
    return Record(
        **_unit_fields(model, task, unit),
        output=gen.text if gen.failure is None else None,
        **failure_fields(gen.failure),
        finish_reason=gen.finish_reason,
        n_prompt_tokens=gen.n_prompt_tokens,
        n_output_tokens=gen.n_output_tokens,
        speculative=gen.notes.get("speculative"),
        seconds=round(gen.seconds, 4),
    )


def loglik_record(model: PreparedModel, task: PreparedTask, unit: Unit, scores: list[OptionScore],
                  seconds: float) -> Record:
    """A loglik unit's record: every option's scores and the best option by the task's normalisation
    (as `output`); an option the engine could not score makes the whole unit an error."""
    normalization = task.loglik.normalization
    failure = unit.failure or next((s.failure for s in scores if s.failure is not None), None)
    table = None if failure else {key: s.record_entry() for (key, _), s in zip(unit.continuations, scores)}
    n_context = next((s.n_context_tokens for s in scores if s.n_context_tokens is not None), None)
    return Record(
        **_unit_fields(model, task, unit),
        output=None if table is None else best_option(table, normalization),
        **failure_fields(failure), finish_reason="error" if failure else None,
        mode="loglik", scores=table, normalization=normalization,
        n_prompt_tokens=n_context, seconds=round(seconds, 4),
    )


# --- loglik scoring ----------------------------------------------------------------------------------------

def _score_units(engine: Engine, task: PreparedTask, units: list[Unit]) -> list[tuple[list[OptionScore], float]]:
    """(option scores, seconds) per unit. Letters: one pass over each prompt and the letters' logits at its
    end (the letter fast path), or full scoring for a prompt after which a letter is not one token. Full
    text: every unit of the chunk packed into one scoring call."""
    if task.loglik.scoring == "letter":
        out = []
        for unit in units:
            began = time.perf_counter()
            out.append((letter_scores(engine, unit), time.perf_counter() - began))
        return out
    began = time.perf_counter()
    scores = engine.loglikelihood_many([(u.prompt, [text for _, text in u.continuations]) for u in units])
    each = (time.perf_counter() - began) / max(1, len(units))
    return [(s, each) for s in scores]


def letter_scores(engine: Engine, unit: Unit) -> list[OptionScore]:
    """The options' letters scored as the next token after the unit's prompt; the full scoring of each letter
    where one is not a single token there."""
    letters = [text for _, text in unit.continuations]
    try:
        logprobs = engine.letter_logprobs(unit.prompt, letters)
    except EngineError as exc:
        if exc.kind is ErrorKind.NOT_SINGLE_TOKEN:
            return engine.loglikelihood(unit.prompt, letters)
        return [OptionScore.failed(exc.kind, exc.detail) for _ in letters]
    return [OptionScore.single_token(logprobs[letter]) for letter in letters]
