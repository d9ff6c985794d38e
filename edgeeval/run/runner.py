"""The runner: skip the units already recorded, send the rest to the engine, append each record."""

from __future__ import annotations

import hashlib
import importlib.metadata
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Protocol, cast

from tqdm import tqdm

import edgeeval
from edgeeval import kinds
from edgeeval.config.models import Project
from edgeeval.engine import Engine, EngineError, EngineSettings, Generation, OptionScore
from edgeeval.engine.batching import auto_parallel
from edgeeval.engine.machine import machine_info
from edgeeval.engine.memory import kv_cache_bytes
from edgeeval.errors import ErrorKind
from edgeeval.kinds import icd
from edgeeval.kinds.parsing import best_option
from edgeeval.run.planning import PreparedModel, PreparedTask, Unit, plan_units, prepare_model
from edgeeval.run.shard import Shard, write_status
from edgeeval.run.store import Manifest, ModelEntry, PairEntry, Record, RunStore, TaskEntry, load_manifest, now_iso

EngineFactory = Callable[[Path, EngineSettings], Engine]
NODE = socket.gethostname()
"""What local records name as their `node`."""


@dataclass
class RunSummary:
    run_dir: Path
    done: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    per_model: dict = field(default_factory=dict)


@dataclass
class ModelWork:
    """A model and the units of it not yet recorded, in task order."""

    model: PreparedModel
    pending: list[tuple[PreparedTask, Unit]]


class Executor(Protocol):
    """Where the pending units are answered: this process (`local_executor`) or a Ray cluster
    (edgeeval.cluster). It appends every record to the store itself and returns, per model that did
    work, what its engines reported (for the manifest)."""

    def __call__(self, store: RunStore, work: list[ModelWork], settings: EngineSettings,
                 summary: RunSummary, progress: bool, parallel: int | str) -> dict[str, dict]: ...


def make_record(model: PreparedModel, task: PreparedTask, unit: Unit, gen: Generation) -> Record:
    return Record(
        model=model.name,
        model_sha256=model.sha256,
        task=task.run_name,
        task_hash=task.hash,
        example_id=unit.example.id,
        prompt_hash=unit.prompt_hash,
        prompt=unit.prompt,
        gold=unit.example.gold,
        options=unit.example.fields.get("options"),
        output=gen.text if gen.error is None else None,
        error=gen.error,
        error_kind=gen.error_kind,
        truncation=unit.truncation,
        finish_reason=gen.finish_reason,
        n_prompt_tokens=gen.n_prompt_tokens,
        n_output_tokens=gen.n_output_tokens,
        speculative=gen.notes.get("speculative"),
        seconds=round(gen.seconds, 4),
        created=now_iso(),
        retrieval=unit.retrieval,
    )


def loglik_record(model: PreparedModel, task: PreparedTask, unit: Unit, scores: list[OptionScore],
                  seconds: float) -> Record:
    """A loglik unit's record: every option's scores and the best option by the task's normalisation
    (as `output`); an option the engine could not score makes the whole unit an error."""
    normalization = task.loglik.normalization
    error, error_kind = next(((s.error, s.error_kind) for s in scores if s.error is not None), (None, None))
    if unit.error is not None:
        error, error_kind = unit.error, unit.error_kind
    table = None if error else {key: s.record_entry() for (key, _), s in zip(unit.continuations, scores)}
    n_context = next((s.n_context_tokens for s in scores if s.n_context_tokens is not None), None)
    return Record(
        model=model.name, model_sha256=model.sha256, task=task.run_name, task_hash=task.hash,
        example_id=unit.example.id, prompt_hash=unit.prompt_hash, prompt=unit.prompt, gold=unit.example.gold,
        options=unit.example.fields.get("options"),
        output=None if table is None else best_option(table, normalization),
        error=error, error_kind=error_kind, truncation=unit.truncation, finish_reason="error" if error else None,
        mode="loglik", scores=table, normalization=normalization,
        n_prompt_tokens=n_context, seconds=round(seconds, 4), created=now_iso(), retrieval=unit.retrieval,
    )


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_manifest(model: PreparedModel, project: Project, folded: bool) -> ModelEntry:
    spec = project.config.models[model.name]
    return ModelEntry(
        path=str(model.path), sha256=model.sha256, size_bytes=model.gguf.size_bytes,
        architecture=model.gguf.architecture, name=model.gguf.name,
        quantization=model.gguf.quantization, context_length=model.gguf.context_length,
        family=spec.family, base=spec.base, source=spec.source,
        chat_template=model.chat.source,
        chat_template_sha256=hashlib.sha256(model.chat.text.encode()).hexdigest(),
        system_folded_into_user=folded,
        **({"base_model": spec.base_model} if spec.base_model else {}),
        **({"retrieval": model.retrieval.manifest()} if model.retrieval is not None else {}),
    )


Mode = Literal["generate", "loglik"]
"""prepare_task accepts these modes only (planning.MODES)."""


def task_manifest(task: PreparedTask) -> TaskEntry:
    """The task's entry in manifest.json: everything scoring needs (kind, labels, metrics, the parser and
    scorer versions that read its answers) and what shaped its prompts, so a run directory can be re-scored
    and understood without the task files."""
    spec = task.spec
    few_shot = None if spec.few_shot is None else {**spec.few_shot.model_dump(), "sha256": task.few_shot_sha256}
    return TaskEntry(
        hash=task.hash, data=str(task.data_path), data_sha256=task.data_sha256,
        format=spec.data.format, examples=len(task.examples), kind=spec.kind,
        labels=spec.labels, metrics=spec.metrics, rouge_stemmer=spec.rouge_stemmer,
        max_tokens=spec.max_tokens, stop=spec.stop, prompt=task.template, few_shot=few_shot,
        context=spec.context.model_dump(), mode=cast(Mode, task.mode), name=spec.name,
        loglik=spec.loglik.model_dump() if task.mode == "loglik" and spec.loglik is not None else None,
        icd_table=icd.TABLE if spec.kind == "icd_coding" else None,
        **kinds.get(spec.kind).version,
    )


def run_models(project: Project, pair_name: str, models: list[str], tasks: list[PreparedTask],
               out_dir: Path, settings: EngineSettings, engine_factory: EngineFactory,
               progress: bool = True, parallel: int | str = 1, retry_errors: bool = False,
               shard: Shard | None = None, executor: Executor | None = None) -> RunSummary:
    """Evaluate every model on every task into `out_dir`, resuming whatever is already there (with
    `retry_errors`, units whose last record is an error are done again; the new record wins). With a
    `shard`, only its examples, into its own record files; with an `executor`, answered there (a Ray
    cluster) instead of in this process."""
    started = time.perf_counter()
    summary = RunSummary(run_dir=out_dir)
    prepared = [prepare_model(project, name, settings) for name in models]  # fail fast, before any inference
    with RunStore(out_dir, part=shard.part if shard else None) as store:
        manifest = load_manifest(out_dir) or Manifest()
        manifest.edgeeval = edgeeval.__version__
        manifest.llama_cpp_python = package_version("llama_cpp_python")
        manifest.machine = machine_info()
        if executor is None:
            manifest.nodes[NODE] = manifest.machine
        manifest.settings = asdict(settings.resolved())
        manifest.config = str(project.config_path)
        pair = project.config.pairs.get(pair_name)
        manifest.pairs[pair_name] = PairEntry(baseline=pair.baseline if pair else models[0],
                                              candidate=pair.candidate if pair else models[-1])
        manifest.tasks.update({t.run_name: task_manifest(t) for t in tasks})
        # Every model's prompts are rendered before any inference, so a template that fails on
        # the candidate does not wait for hours of baseline work to say so.
        all_plans = [[(task, *plan_units(model, task)) for task in tasks] for model in prepared]
        for model in prepared:  # the passages are in the prompts: an embedding retriever's worker can go
            if model.retrieval is not None:
                model.retrieval.close()
        for model, plans in zip(prepared, all_plans):
            manifest.models[model.name] = model_manifest(model, project, any(f for _, _, f in plans))
        store.write_manifest(manifest)
        if shard is not None:
            all_plans = [[(task, [u for u in units if shard.owns(task.spec.name, u.example.id)], folded)
                          for task, units, folded in plans] for plans in all_plans]
        work = [ModelWork(model, pending_units(store, model, plans, summary, retry_errors))
                for model, plans in zip(prepared, all_plans)]
        planned = {w.model.name: {t.run_name: len(u) for t, u, _ in plans} for w, plans in zip(work, all_plans)}
        if shard is not None:
            write_status(out_dir, shard, "running", planned)
        run = executor or local_executor(engine_factory)
        manifest.engine.update(run(store, [w for w in work if w.pending], settings, summary, progress, parallel))
        manifest.nodes.update(getattr(run, "nodes", {}))  # the machines a cluster's actors ran on
        summary.seconds = time.perf_counter() - started
        manifest.invocations.append({
            "finished": now_iso(), "wall_seconds": round(summary.seconds, 2), "generated": summary.done,
            "skipped_done": summary.skipped, "errors": summary.errors, "argv": sys.argv[1:],
            "modes": sorted({t.mode for t in tasks}), "parallel": parallel, "retry_errors": retry_errors,
            **({"shard": str(shard)} if shard else {}), **getattr(run, "invocation", {}),
        })
        store.write_manifest(manifest)
        if shard is not None:
            write_status(out_dir, shard, "finished", planned,
                         {"generated": summary.done, "errors": summary.errors, "wall_seconds": round(summary.seconds, 2)})
    return summary


LOGLIK_CHUNK = 8
"""Items per scoring call in loglik mode: packed into shared batches, and what a native crash costs at most."""
GENERATE_CHUNK_PER_SEQUENCE = 4
"""With --parallel N, prompts per generate_many call: 4N keeps N sequences busy between refills."""


def pending_units(store: RunStore, model: PreparedModel, plans, summary: RunSummary,
                  retry_errors: bool = False) -> list[tuple[PreparedTask, Unit]]:
    """The planned units of a model with no record yet (with `retry_errors`, or whose last one is an error)."""
    pending: list[tuple[PreparedTask, Unit]] = []
    for task, units, _ in plans:
        latest = {r.key(): r for r in store.load(model.name, task.run_name)}  # the last record of a unit wins
        done = {key for key, r in latest.items() if not (retry_errors and r.error is not None)}
        todo = [u for u in units if (model.sha256, task.hash, u.example.id, u.prompt_hash) not in done]
        summary.skipped += len(units) - len(todo)
        pending.extend((task, unit) for unit in todo)
    return pending


def local_executor(engine_factory: EngineFactory) -> Executor:
    """Every model in turn, in this process's engine worker."""
    def run(store, work, settings, summary, progress, parallel):
        return {w.model.name: _run_model(store, w.model, w.pending, settings, engine_factory, summary, progress,
                                         parallel) for w in work}
    return run


def _run_model(store: RunStore, model: PreparedModel, pending: list[tuple[PreparedTask, Unit]],
               settings: EngineSettings, engine_factory: EngineFactory, summary: RunSummary, progress: bool,
               parallel: int | str = 1) -> dict:
    engine = engine_factory(model.path, replace(settings, n_ctx=model.n_ctx))
    parallel = parallel_for(model, settings) if parallel == "auto" else parallel
    assert isinstance(parallel, int)  # an int or 'auto' (the CLI's --parallel)
    started = time.perf_counter()
    try:
        bar = tqdm(total=len(pending), desc=f"{model.name}", unit="ex", disable=not progress, dynamic_ncols=True)
        for task, units in _chunks(pending, parallel):
            for record in _work(engine, model, task, units, parallel, speculative_for(task, settings)):
                store.append(record.model_copy(update={"node": NODE}))
                summary.done += 1
                summary.errors += record.error is not None
                bar.update(1)
        bar.close()
        info = engine.info()
    finally:
        engine.close()
    elapsed = time.perf_counter() - started
    summary.per_model[model.name] = {"examples": len(pending), "seconds": round(elapsed, 2),
                                     "examples_per_s": round(len(pending) / elapsed, 3) if elapsed else None}
    return {**info, **summary.per_model[model.name], "parallel": parallel}


def parallel_for(model: PreparedModel, settings: EngineSettings) -> int:
    """`--parallel auto`: the rule of engine/batching.py for this model file, context and threads (the
    fake engine has no batch speed-up: one at a time, where a kill loses one unit, not a chunk)."""
    if settings.backend == "fake":
        return 1
    kv = kv_cache_bytes(model.gguf.metadata, model.n_ctx)
    return auto_parallel(model.path.stat().st_size, kv, settings.resolved().n_threads)


def speculative_for(task: PreparedTask, settings: EngineSettings) -> str | None:
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


def _chunks(pending: list[tuple[PreparedTask, Unit]], parallel: int):
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


def _work(engine: Engine, model: PreparedModel, task: PreparedTask, units: list[Unit], parallel: int,
          speculative: str | None = None):
    """The records of one chunk of units, in order (units that cannot be sent become error records)."""
    ready = [u for u in units if u.error is None]
    if task.mode == "loglik":
        scored = dict(zip(map(id, ready), _score_units(engine, task, ready)))
        for unit in units:
            scores, seconds = scored.get(id(unit), ([], 0.0))
            yield loglik_record(model, task, unit, scores, seconds)
        return
    spec = task.spec
    if parallel > 1 and len(ready) > 1:
        gens = engine.generate_many([u.prompt for u in ready], spec.max_tokens, list(spec.stop), n_parallel=parallel,
                                    speculative=speculative)
        if all(g.error_kind is ErrorKind.NATIVE_CRASH for g in gens):
            # The batch crashed twice: answer one at a time, so the crash costs its own unit only.
            gens = [engine.generate(u.prompt, spec.max_tokens, list(spec.stop), speculative=speculative) for u in ready]
    else:
        gens = [engine.generate(u.prompt, spec.max_tokens, list(spec.stop), speculative=speculative) for u in ready]
    results = dict(zip(map(id, ready), gens))
    for unit in units:
        gen = results.get(id(unit)) or Generation(text=None, finish_reason="error", error=unit.error,
                                                  error_kind=unit.error_kind)
        yield make_record(model, task, unit, gen)


def _score_units(engine: Engine, task: PreparedTask, units: list[Unit]) -> list[tuple[list[OptionScore], float]]:
    """(option scores, seconds) per unit. Letters: one pass over each prompt and the letters' logits at its
    end (the letter fast path), or full scoring for a prompt after which a letter is not one token. Full
    text: every unit of the chunk packed into one scoring call."""
    if task.loglik.scoring == "letter":
        out = []
        for unit in units:
            began = time.perf_counter()
            out.append((_letter_scores(engine, unit), time.perf_counter() - began))
        return out
    began = time.perf_counter()
    scores = engine.loglikelihood_many([(u.prompt, [text for _, text in u.continuations]) for u in units])
    each = (time.perf_counter() - began) / max(1, len(units))
    return [(s, each) for s in scores]


def _letter_scores(engine: Engine, unit: Unit) -> list[OptionScore]:
    letters = [text for _, text in unit.continuations]
    try:
        logprobs = engine.letter_logprobs(unit.prompt, letters)
    except EngineError as exc:
        if exc.kind is ErrorKind.NOT_SINGLE_TOKEN:
            return engine.loglikelihood(unit.prompt, letters)
        return [OptionScore.failed(exc.kind, exc.detail) for _ in letters]
    return [OptionScore.single_token(logprobs[letter]) for letter in letters]
