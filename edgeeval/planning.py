"""Planning: tasks and models prepared for a run, and every (model, task, example) unit's prompt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgeeval import kinds
from edgeeval.chat import ChatTemplate, load_chat_template, prompt_hash
from edgeeval.config import Project, TaskSpec, load_task, resolve_model_path, task_hash
from edgeeval.context import fit_example
from edgeeval.data import Example
from edgeeval.errors import ConfigError, DataError, ErrorKind, TemplateError
from edgeeval.formats import load_examples
from edgeeval.gguf_file import GGUFInfo, read_gguf_metadata, sha256_file
from edgeeval.prompts import AnswerTemplate, TaskPrompt
from edgeeval.sha256_cache import cached_sha256

TASKS_DIR = Path("benchmarks/clinical")

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
    error_kind: ErrorKind | None = None
    """The kind of `error`."""


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
            options = kinds.get(task.spec.kind).loglik_options(task.spec, example)
            # What is scored is part of the unit's identity: other options, another scoring rule, a new unit.
            identity = "\0".join([text, task.spec.loglik.scoring, *(f"{k}={t}" for k, t in options)])
            units.append(Unit(example, text, prompt_hash(identity), fitted.truncation, fitted.error, options,
                              error_kind=fitted.error_kind))
        else:
            units.append(Unit(example, text, prompt_hash(text), fitted.truncation, fitted.error,
                              error_kind=fitted.error_kind))
    return units, folded
