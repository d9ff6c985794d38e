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
from edgeeval.engine import Engine, EngineSettings
from edgeeval.engine.sharing import share_order
from edgeeval.engine.machine import machine_info
from edgeeval.prompting.token_budget import TokenCounter, needs_tokenizer
from edgeeval.run.answering import answer, engine_calls, parallel_for, speculative_for
from edgeeval.run.planning import PreparedModel, PreparedTask, Unit, plan_units, prepare_model
from edgeeval.run.repack import choose_repack
from edgeeval.run.shard import Shard, write_status
from edgeeval.run.store import Manifest, ModelEntry, PairEntry, RunStore, TaskEntry, load_manifest, now_iso

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
    (edgeeval.run.cluster). It appends every record to the store itself and returns, per model that did
    work, what its engines reported (for the manifest)."""

    def __call__(self, store: RunStore, work: list[ModelWork], settings: EngineSettings,
                 summary: RunSummary, progress: bool, parallel: int | str) -> dict[str, dict]: ...


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
        system_folded_into_user=folded, reference=spec.reference,
        **({"base_model": spec.base_model} if spec.base_model else {}),
        **({"retrieval": model.retrieval.manifest()} if model.retrieval is not None else {}),
    )


Mode = Literal["generate", "loglik"]
"""prepare_task accepts these modes only (planning.MODES)."""


def task_manifest(task: PreparedTask) -> TaskEntry:
    """The task's entry in manifest.json: everything scoring needs (kind, labels, metrics, the parser and
    scorer versions that read its answers) and what shaped its prompts, so a run directory can be re-scored
    and understood without the task files."""
    spec, kind = task.spec, kinds.get(task.spec.kind)
    few_shot = None if spec.few_shot is None else {**spec.few_shot.model_dump(), "sha256": task.few_shot_sha256}
    return TaskEntry(
        hash=task.hash, data=str(task.data_path), data_sha256=task.data_sha256,
        format=spec.data.format, examples=len({e.id for e in task.examples}), kind=spec.kind,
        repeats=spec.repeats if spec.repeats > 1 else None,
        permute=task.permute, units=len(task.examples) if task.permute is not None else None,
        document_order=spec.data.document_order if spec.data.format == "longhealth" else None,
        labels=spec.labels, metrics=spec.metrics, rouge_stemmer=spec.rouge_stemmer,
        max_tokens=spec.max_tokens, stop=spec.stop, prompt=task.template, few_shot=few_shot,
        context=spec.context.model_dump(), mode=cast(Mode, task.mode), name=spec.name,
        loglik=spec.loglik.model_dump() if task.mode == "loglik" and spec.loglik is not None else None,
        icd_table=kind.code_table,
        published=spec.published.model_dump() if spec.published is not None else None,
        reply_prefix=spec.reply_prefix or None, answer_rule=spec.answer_rule,
        **kind.version,
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
        all_plans = [plan_model(model, tasks, settings, engine_factory) for model in prepared]
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


def plan_model(model: PreparedModel, tasks: list[PreparedTask], settings: EngineSettings,
               engine_factory: EngineFactory) -> list[tuple[PreparedTask, list[Unit], bool]]:
    """Every task's units for one model. A task whose context rule counts the model's own tokens gets them from a
    worker that loads the model's vocabulary only (seconds, no weights), stopped once the prompts are planned."""
    engine = None
    if any(needs_tokenizer(task.spec.context) for task in tasks):
        engine = engine_factory(model.path, replace(settings, n_ctx=model.n_ctx, vocab_only=True))
    try:
        tokens = TokenCounter(engine) if engine is not None else None
        return [(task, *plan_units(model, task, tokens)) for task in tasks]
    finally:
        if engine is not None:
            engine.close()


def pending_units(store: RunStore, model: PreparedModel, plans, summary: RunSummary,
                  retry_errors: bool = False) -> list[tuple[PreparedTask, Unit]]:
    """The planned units of a model with no record yet (with `retry_errors`, or whose last one is an error), each
    task's in the order that keeps prompts sharing a prefix together (engine/sharing.py)."""
    pending: list[tuple[PreparedTask, Unit]] = []
    for task, units, _ in plans:
        latest = {r.key(): r for r in store.load(model.name, task.run_name)}  # the last record of a unit wins
        done = {key for key, r in latest.items() if not (retry_errors and r.error is not None)}
        todo = [u for u in units if (model.sha256, task.hash, u.example.unit_id, u.prompt_hash) not in done]
        summary.skipped += len(units) - len(todo)
        pending.extend((task, todo[i]) for i in share_order([u.prompt for u in todo]))
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
    repack = None
    if settings.backend == "llama":  # --repack auto measures (once per model file and machine), then chooses
        if progress and settings.use_extra_bufts is None:
            tqdm.write(f"{model.name}: choosing weight repacking (--repack auto; measured once per model and machine)")
        settings, repack = choose_repack(model, settings, pending, engine_factory)
    engine = engine_factory(model.path, replace(settings, n_ctx=model.n_ctx))
    parallel = parallel_for(model, settings) if parallel == "auto" else parallel
    assert isinstance(parallel, int)  # an int or 'auto' (the CLI's --parallel)
    started = time.perf_counter()
    try:
        bar = tqdm(total=len(pending), desc=f"{model.name}", unit="ex", disable=not progress, dynamic_ncols=True)
        for task, units in engine_calls(pending, parallel):
            for record in answer(engine, model, task, units, parallel, speculative_for(task, settings)):
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
    return {**info, **summary.per_model[model.name], "parallel": parallel,
            **({"repack": repack} if repack is not None else {})}


