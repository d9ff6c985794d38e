"""The runner: plan (model x task x example) units, skip what is done, generate the rest, record each."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

import edgeeval
from edgeeval import icd
from edgeeval.chat import ChatTemplate, load_chat_template, prompt_hash
from edgeeval.config import Project, TaskSpec, load_task, resolve_model_path, task_hash
from edgeeval.context import fit_example
from edgeeval.data import Example
from edgeeval.engine import Engine, EngineError, EngineSettings, Generation, OptionScore, error_score
from edgeeval.errors import ConfigError, DataError, TemplateError
from edgeeval.formats import load_examples
from edgeeval.gguf_file import GGUFInfo, read_gguf_metadata, sha256_file
from edgeeval.machine import machine_info
from edgeeval.parsing import best_option
from edgeeval.prompts import AnswerTemplate, TaskPrompt
from edgeeval.sha256_cache import cached_sha256
from edgeeval.store import Record, RunStore, now_iso

TASKS_DIR = Path("benchmarks/clinical")

EngineFactory = Callable[[Path, EngineSettings], Engine]


@dataclass(frozen=True)
class PreparedTask:
    """A task ready to run: its spec, hash, and examples (the template is checked on all of them)."""

    spec: TaskSpec
    hash: str
    data_path: Path
    data_sha256: str
    examples: list[Example]
    prompt: TaskPrompt
    shots: tuple[tuple[str, str], ...] = ()
    """Few-shot examples as (user message, assistant answer), shown before each question."""
    few_shot_sha256: str | None = None
    mode: str = "generate"
    """'generate' (answers generated, then parsed) or 'loglik' (options scored by log-probability)."""

    @property
    def template(self) -> str:
        """The user-message template's path as the task file gives it."""
        return user_template(self.spec, self.mode)

    @property
    def run_name(self) -> str:
        """The name its records and report rows go under: a loglik run of a task is a task of its own,
        so both modes can share a run directory and be compared."""
        return self.spec.name if self.mode == "generate" else f"{self.spec.name}@{self.mode}"


@dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    sha256: str
    gguf: GGUFInfo
    chat: ChatTemplate
    n_ctx: int


@dataclass
class RunSummary:
    run_dir: Path
    done: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    per_model: dict = field(default_factory=dict)


def task_path(project: Project, name: str) -> Path:
    path = project.root / TASKS_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (project.root / TASKS_DIR).glob("*.toml")))
        raise ConfigError(f"unknown task '{name}' (no {path}; tasks: {known})")
    return path


MODES = ("generate", "loglik")


def prepare_task(project: Project, name: str, data_override: Path | None, limit: int | None,
                 max_tokens: int | None = None, mode: str = "generate") -> PreparedTask:
    path = task_path(project, name)
    spec = load_task(path)
    if mode not in MODES:
        raise ConfigError(f"unknown mode '{mode}' (modes: {', '.join(MODES)})")
    if mode == "loglik" and spec.loglik is None:
        raise ConfigError(f"task '{name}' has no [loglik] section ({path}); its answers are generated and "
                          "parsed, so run it with --mode generate")
    if max_tokens is not None:
        spec = spec.model_copy(update={"max_tokens": max_tokens})
    data_path = data_override if data_override is not None else project.root / spec.data.path
    examples = load_examples(data_path, spec)
    prompt = TaskPrompt(Path(user_template(spec, mode)), root=project.root)
    shots, shots_sha = few_shot_turns(project, spec, prompt, examples)
    if limit is not None:
        examples = examples[:limit]
    data_sha = sha256_file(data_path)
    # The few-shot file is part of every prompt, so it is part of the task's identity too.
    identity = data_sha if shots_sha is None else f"{data_sha}+{shots_sha}"
    digest = task_hash(spec, prompt.text, identity)
    if mode != "generate":
        digest = hashlib.sha256(f"{digest}\0{mode}\0{spec.loglik.model_dump_json()}".encode()).hexdigest()[:16]
    return PreparedTask(spec, digest, data_path, data_sha, examples, prompt, tuple(shots), shots_sha, mode)


def user_template(spec: TaskSpec, mode: str) -> str:
    """The user-message template of a task in a mode: the [loglik] section's own, if it names one."""
    if mode == "loglik" and spec.loglik is not None and spec.loglik.prompt:
        return spec.loglik.prompt
    return spec.prompt


def few_shot_turns(project: Project, spec: TaskSpec, prompt: TaskPrompt,
                   examples: list[Example]) -> tuple[list[tuple[str, str]], str | None]:
    """The first `count` examples of the task's few-shot file as (user, assistant) turns, and the file's
    sha256. A few-shot example that is also a test item (the same rendered prompt) is an error."""
    if spec.few_shot is None:
        return [], None
    path = project.root / spec.few_shot.path
    shots = load_examples(path, spec)
    if len(shots) < spec.few_shot.count:
        raise ConfigError(f"{path}: {len(shots)} example(s), but task '{spec.name}' asks for "
                          f"{spec.few_shot.count} few-shot examples")
    answer = AnswerTemplate(spec.few_shot.answer, f"task '{spec.name}' few_shot.answer")
    turns = [(prompt.render(shot), answer.render(shot)) for shot in shots[: spec.few_shot.count]]
    tested = {prompt.render(example): example for example in examples}
    for shot, (user, _) in zip(shots, turns):
        if user in tested:
            raise DataError(f"{shot.source}: few-shot example is also the test item {tested[user].id} "
                            f"({tested[user].source}); few-shot examples must come from another split")
    return turns, sha256_file(path)


def prepare_model(project: Project, name: str) -> PreparedModel:
    spec = project.config.models[name]
    path = resolve_model_path(project, name)
    info = read_gguf_metadata(path)
    sha = cached_sha256(path)
    if spec.sha256 and spec.sha256.lower() != sha:
        raise ConfigError(f"model '{name}': {path} has sha256 {sha}, but models.toml expects {spec.sha256}")
    # llama.cpp adds the BOS token itself when it tokenizes, so templates get an empty bos_token;
    # the EOS text is real (multi-turn Llama-2/Mistral prompts close earlier turns with it).
    try:
        chat = load_chat_template(spec.chat_template, info.chat_template, "", info.eos_token or "", project.root)
    except TemplateError as exc:
        raise TemplateError(f"model '{name}' ({path}): {exc}") from None
    n_ctx = min(spec.n_ctx, info.context_length or spec.n_ctx)
    return PreparedModel(name, path, sha, info, chat, n_ctx)


def task_messages(task: PreparedTask, example: Example) -> list[dict[str, str]]:
    """The conversation for one example: the system text, the few-shot turns, then the question."""
    messages = [{"role": "system", "content": task.spec.system}] if task.spec.system else []
    for user, assistant in task.shots:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": task.prompt.render(example)}]


def build_prompt(chat: ChatTemplate, messages: list[dict[str, str]]) -> tuple[str, bool]:
    """The full prompt text; returns (text, system_folded). Templates that reject a system role
    (Mistral-Instruct, for one) get the system text folded into the first user turn, and we say so."""
    if not messages or messages[0]["role"] != "system":
        return chat.render(messages), False
    try:
        return chat.render(messages), False
    except TemplateError:
        system, first, *rest = messages
        folded = {"role": "user", "content": f"{system['content']}\n\n{first['content']}"}
        return chat.render([folded, *rest]), True


@dataclass(frozen=True)
class Unit:
    example: Example
    prompt: str
    prompt_hash: str
    truncation: dict | None = None
    """How the context policy cut the prompt, when it did."""
    error: str | None = None
    """Why the prompt cannot be sent (it cannot fit the window even cut); recorded without generating."""
    continuations: tuple[tuple[str, str], ...] = ()
    """loglik: (option key, text scored after the prompt) for every option."""


def plan_units(model: PreparedModel, task: PreparedTask) -> tuple[list[Unit], bool]:
    units, folded = [], False
    budget = model.n_ctx - task.spec.max_tokens
    answer_prefix = task.spec.loglik.answer_prefix if task.mode == "loglik" else ""

    def render(example: Example) -> str:
        return build_prompt(model.chat, task_messages(task, example))[0] + answer_prefix

    for example in task.examples:
        fitted = fit_example(example, task.spec.context, budget, render)
        text, was_folded = build_prompt(model.chat, task_messages(task, fitted.example))
        folded = folded or was_folded
        if task.mode == "loglik":
            text += answer_prefix
            options = loglik_continuations(task, example)
            # What is scored is part of the unit's identity: other options, another scoring rule, a new unit.
            identity = "\0".join([text, task.spec.loglik.scoring, *(f"{k}={t}" for k, t in options)])
            units.append(Unit(example, text, prompt_hash(identity), fitted.truncation, fitted.error, options))
        else:
            units.append(Unit(example, text, prompt_hash(text), fitted.truncation, fitted.error))
    return units, folded


def loglik_continuations(task: PreparedTask, example: Example) -> tuple[tuple[str, str], ...]:
    """The continuations a loglik unit scores, keyed as gold is: option letters, or a label task's labels."""
    if task.spec.kind == "label":
        return tuple((label, label) for label in task.spec.labels)
    options = example.fields.get("options") or {}
    if not options:
        raise DataError(f"{example.source}: example {example.id} has no options to score")
    if task.spec.loglik.scoring == "letter":
        return tuple((letter, letter) for letter in options)
    return tuple((letter, str(text)) for letter, text in options.items())


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
        truncation=unit.truncation,
        finish_reason=gen.finish_reason,
        n_prompt_tokens=gen.n_prompt_tokens,
        n_output_tokens=gen.n_output_tokens,
        seconds=round(gen.seconds, 4),
        created=now_iso(),
    )


def loglik_record(model: PreparedModel, task: PreparedTask, unit: Unit, scores: list[OptionScore],
                  seconds: float) -> Record:
    """A loglik unit's record: every option's scores and the best option by the task's normalisation
    (as `output`); an option the engine could not score makes the whole unit an error."""
    normalization = task.spec.loglik.normalization
    error = unit.error or next((s["error"] for s in scores if s.get("error")), None)
    table = None if error else {
        key: {"logprob": s["logprob"], "mean_logprob": s["mean_logprob"], "n_tokens": s["n_tokens"],
              "token_logprobs": s["token_logprobs"], "is_greedy": s.get("is_greedy")}
        for (key, _), s in zip(unit.continuations, scores)}
    n_context = next((s.get("n_context_tokens") for s in scores if s.get("n_context_tokens") is not None), None)
    return Record(
        model=model.name, model_sha256=model.sha256, task=task.run_name, task_hash=task.hash,
        example_id=unit.example.id, prompt_hash=unit.prompt_hash, prompt=unit.prompt, gold=unit.example.gold,
        options=unit.example.fields.get("options"),
        output=None if table is None else best_option(table, normalization),
        error=error, truncation=unit.truncation, finish_reason="error" if error else None,
        mode="loglik", scores=table, normalization=normalization,
        n_prompt_tokens=n_context, seconds=round(seconds, 4), created=now_iso(),
    )


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_manifest(model: PreparedModel, project: Project, folded: bool) -> dict:
    spec = project.config.models[model.name]
    return {
        "path": str(model.path), "sha256": model.sha256, "size_bytes": model.gguf.size_bytes,
        "architecture": model.gguf.architecture, "name": model.gguf.name,
        "quantization": model.gguf.quantization, "context_length": model.gguf.context_length,
        "family": spec.family, "base": spec.base, "source": spec.source,
        "chat_template": model.chat.source,
        "chat_template_sha256": hashlib.sha256(model.chat.text.encode()).hexdigest(),
        "system_folded_into_user": folded,
    }


def task_manifest(task: PreparedTask) -> dict:
    """The task's entry in manifest.json: everything scoring needs (kind, labels, metrics) and what
    shaped its prompts, so a run directory can be re-scored and understood without the task files."""
    spec = task.spec
    few_shot = None if spec.few_shot is None else {**spec.few_shot.model_dump(), "sha256": task.few_shot_sha256}
    return {"hash": task.hash, "data": str(task.data_path), "data_sha256": task.data_sha256,
            "format": spec.data.format, "examples": len(task.examples), "kind": spec.kind,
            "labels": spec.labels, "metrics": spec.metrics, "rouge_stemmer": spec.rouge_stemmer,
            "max_tokens": spec.max_tokens, "stop": spec.stop, "prompt": task.template, "few_shot": few_shot,
            "context": spec.context.model_dump(), "mode": task.mode, "name": spec.name,
            **({"loglik": spec.loglik.model_dump()} if task.mode == "loglik" else {}),
            **({"icd_table": icd.TABLE} if spec.kind == "icd_coding" else {})}


def load_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None


def run_models(project: Project, pair_name: str, models: list[str], tasks: list[PreparedTask],
               out_dir: Path, settings: EngineSettings, engine_factory: EngineFactory,
               progress: bool = True, parallel: int = 1, retry_errors: bool = False) -> RunSummary:
    """Evaluate every model on every task into `out_dir`, resuming whatever is already there (with
    `retry_errors`, units whose last record is an error are done again; the new record wins)."""
    started = time.perf_counter()
    summary = RunSummary(run_dir=out_dir)
    prepared = [prepare_model(project, name) for name in models]  # fail fast, before any inference
    with RunStore(out_dir) as store:
        manifest = load_manifest(out_dir)
        manifest.update({
            "edgeeval": edgeeval.__version__,
            "llama_cpp_python": package_version("llama_cpp_python"),
            "machine": machine_info(),
            "settings": asdict(settings.resolved()),
            "config": str(project.config_path),
        })
        manifest.setdefault("pairs", {})[pair_name] = {
            "baseline": project.config.pairs[pair_name].baseline if pair_name in project.config.pairs else models[0],
            "candidate": project.config.pairs[pair_name].candidate if pair_name in project.config.pairs else models[-1],
        }
        manifest.setdefault("tasks", {}).update({t.run_name: task_manifest(t) for t in tasks})
        manifest.setdefault("models", {})
        manifest.setdefault("engine", {})
        # Every model's prompts are rendered before any inference, so a template that fails on
        # the candidate does not wait for hours of baseline work to say so.
        all_plans = [[(task, *plan_units(model, task)) for task in tasks] for model in prepared]
        for model, plans in zip(prepared, all_plans):
            manifest["models"][model.name] = model_manifest(model, project, any(f for _, _, f in plans))
        store.write_manifest(manifest)
        for model, plans in zip(prepared, all_plans):
            info = _run_model(store, model, plans, settings, engine_factory, summary, progress, parallel,
                              retry_errors)
            if info:
                manifest["engine"][model.name] = info
        summary.seconds = time.perf_counter() - started
        manifest.setdefault("invocations", []).append({
            "finished": now_iso(), "wall_seconds": round(summary.seconds, 2), "generated": summary.done,
            "skipped_done": summary.skipped, "errors": summary.errors, "argv": sys.argv[1:],
            "modes": sorted({t.mode for t in tasks}), "parallel": parallel, "retry_errors": retry_errors,
        })
        store.write_manifest(manifest)
    return summary


LOGLIK_CHUNK = 8
"""Items per scoring call in loglik mode: packed into shared batches, and what a native crash costs at most."""
GENERATE_CHUNK_PER_SEQUENCE = 4
"""With --parallel N, prompts per generate_many call: 4N keeps N sequences busy between refills."""


def _run_model(store: RunStore, model: PreparedModel, plans, settings: EngineSettings,
               engine_factory: EngineFactory, summary: RunSummary, progress: bool, parallel: int = 1,
               retry_errors: bool = False) -> dict | None:
    pending = []
    for task, units, _ in plans:
        latest = {r.key(): r for r in store.load(model.name, task.run_name)}  # the last record of a unit wins
        done = {key for key, r in latest.items() if not (retry_errors and r.error is not None)}
        todo = [u for u in units if (model.sha256, task.hash, u.example.id, u.prompt_hash) not in done]
        summary.skipped += len(units) - len(todo)
        pending.extend((task, unit) for unit in todo)
    if not pending:
        return None  # nothing to do: the model is not even loaded
    engine = engine_factory(model.path, replace(settings, n_ctx=model.n_ctx))
    started = time.perf_counter()
    try:
        bar = tqdm(total=len(pending), desc=f"{model.name}", unit="ex", disable=not progress, dynamic_ncols=True)
        for task, units in _chunks(pending, parallel):
            for record in _work(engine, model, task, units, parallel):
                store.append(record)
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
    return {**info, **summary.per_model[model.name]}


def _chunks(pending: list[tuple[PreparedTask, Unit]], parallel: int):
    """Consecutive units of one task, as many as one engine call takes: one (generation), 4 x parallel
    (batched generation) or LOGLIK_CHUNK (loglik scoring)."""
    i = 0
    while i < len(pending):
        task = pending[i][0]
        size = (LOGLIK_CHUNK if task.mode == "loglik"
                else GENERATE_CHUNK_PER_SEQUENCE * parallel if parallel > 1 else 1)
        units = []
        while i < len(pending) and pending[i][0] is task and len(units) < size:
            units.append(pending[i][1])
            i += 1
        yield task, units


def _work(engine: Engine, model: PreparedModel, task: PreparedTask, units: list[Unit], parallel: int):
    """The records of one chunk of units, in order (units that cannot be sent become error records)."""
    ready = [u for u in units if u.error is None]
    if task.mode == "loglik":
        results = dict(zip(map(id, ready), _score_units(engine, task, ready)))
        for unit in units:
            scores, seconds = results.get(id(unit), ([], 0.0))
            yield loglik_record(model, task, unit, scores, seconds)
        return
    spec = task.spec
    if parallel > 1 and len(ready) > 1:
        gens = engine.generate_many([u.prompt for u in ready], spec.max_tokens, list(spec.stop), n_parallel=parallel)
    else:
        gens = [engine.generate(u.prompt, spec.max_tokens, list(spec.stop)) for u in ready]
    results = dict(zip(map(id, ready), gens))
    for unit in units:
        gen = results.get(id(unit)) or Generation(text=None, finish_reason="error", error=unit.error)
        yield make_record(model, task, unit, gen)


def _score_units(engine: Engine, task: PreparedTask, units: list[Unit]) -> list[tuple[list[OptionScore], float]]:
    """(option scores, seconds) per unit. Letters: one pass over each prompt and the letters' logits at its
    end (the letter fast path), or full scoring for a prompt after which a letter is not one token. Full
    text: every unit of the chunk packed into one scoring call."""
    if task.spec.loglik.scoring == "letter":
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
        if str(exc).startswith("not_single_token"):
            return engine.loglikelihood(unit.prompt, letters)
        return [error_score(str(exc)) for _ in letters]
    return [{"logprob": logprobs[letter], "mean_logprob": logprobs[letter], "n_tokens": 1, "n_context_tokens": None,
             "token_logprobs": [logprobs[letter]], "greedy": None, "is_greedy": None, "error": None}
            for letter in letters]
