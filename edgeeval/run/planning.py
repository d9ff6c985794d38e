"""Planning: tasks and models prepared for a run, and every (model, task, example) unit's prompt."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from edgeeval import kinds
from edgeeval.config.gguf import sha256_file
from edgeeval.config.gguf_format import GGUFInfo
from edgeeval.config.locations import BUILTIN_ROOT, TASKS_SUBDIR, TaskFile, find_tasks, task_folders
from edgeeval.config.model_files import checked_model_file
from edgeeval.config.models import Project
from edgeeval.config.tasks import LoglikSpec, TaskSpec, load_task, task_hash
from edgeeval.data.example import Example
from edgeeval.data.formats import FORMATS, load_examples
from edgeeval.data.permute import Permutation, rotate_examples
from edgeeval.engine import EngineSettings
from edgeeval.errors import ConfigError, DataError, TemplateError
from edgeeval.prompting.chat import ChatTemplate, load_chat_template, prompt_hash
from edgeeval.prompting.prompts import AnswerTemplate, TaskPrompt
from edgeeval.prompting.token_budget import TokenCounter, fit, keep_right, needs_tokenizer, require
from edgeeval.retrieval.arm import prepare_retrieval
from edgeeval.retrieval.augment import Retrieval, query_text, user_message
from edgeeval.types import Failure

TASKS_DIR = TASKS_SUBDIR

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
    permute: str | None = None
    """'cyclic' or 'cyclic:K' when every item is asked under rotations of its options (--permute); else None."""

    @property
    def template(self) -> str:
        """The user-message template's path as the task file gives it."""
        return user_template(self.spec, self.mode)

    @property
    def run_name(self) -> str:
        """The name its records and report rows go under: a loglik run of a task is a task of its own,
        so both modes can share a run directory and be compared."""
        return self.spec.name if self.mode == "generate" else f"{self.spec.name}@{self.mode}"

    @property
    def loglik(self) -> LoglikSpec:
        """The task's [loglik] section, for a loglik run (prepare_task refuses one without it)."""
        if self.spec.loglik is None:
            raise ConfigError(f"task '{self.spec.name}' has no [loglik] section")
        return self.spec.loglik


@dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    sha256: str
    gguf: GGUFInfo
    chat: ChatTemplate
    n_ctx: int
    retrieval: Retrieval | None = None
    """Passages from a corpus in every prompt (a retrieval arm); None for a plain model."""


def project_tasks(project: Project) -> dict[str, TaskFile]:
    """Every task the project can run by name: the built-in ones, those of a config folder laid out like
    the repository, then the user's task folders (a later one replacing an earlier one of the same name)."""
    return find_tasks(task_folders(project.root, project.tasks_dirs))


def task_file(project: Project, name: str) -> TaskFile:
    tasks = project_tasks(project)
    if name not in tasks:
        raise ConfigError(f"unknown task '{name}' (tasks: {', '.join(tasks) or 'none'}; add your own with "
                          "--tasks-dir DIR)")
    return tasks[name]


MODES = ("generate", "loglik")


def prepare_task(project: Project, name: str, data_override: Path | None, limit: int | None,
                 max_tokens: int | None = None, mode: str = "generate",
                 permute: Permutation | None = None) -> PreparedTask:
    found = task_file(project, name)
    path, root = found.path, found.folder.root
    spec = load_task(path)
    if mode not in MODES:
        raise ConfigError(f"unknown mode '{mode}' (modes: {', '.join(MODES)})")
    if mode == "loglik" and spec.loglik is None:
        raise ConfigError(f"task '{name}' has no [loglik] section ({path}); its answers are generated and "
                          "parsed, so run it with --mode generate")
    if max_tokens is not None:
        spec = spec.model_copy(update={"max_tokens": max_tokens})
    data_path = data_override if data_override is not None else root / spec.data.path
    examples = load_examples(data_path, spec.data, spec.labels, spec.repeats)
    try:
        prompt = TaskPrompt(Path(user_template(spec, mode)), root=root)
    except TemplateError as exc:
        raise TemplateError(f"{path}: {exc}") from None
    shots, shots_sha = few_shot_turns(root, spec, prompt, examples)
    if permute is not None:
        examples = permuted(spec, path, prompt, examples, permute)
    if limit is not None:  # the first `limit` items, with every repetition of each
        first = set(list(dict.fromkeys(e.id for e in examples))[:limit])
        examples = [e for e in examples if e.id in first]
    data_sha = sha256_file(data_path)
    # The few-shot file is part of every prompt, so it is part of the task's identity too.
    identity = data_sha if shots_sha is None else f"{data_sha}+{shots_sha}"
    digest = task_hash(spec, prompt.text, identity)
    if mode != "generate":
        assert spec.loglik is not None  # checked above: mode is 'loglik'
        digest = hashlib.sha256(f"{digest}\0{mode}\0{spec.loglik.model_dump_json()}".encode()).hexdigest()[:16]
    if permute is not None:  # other prompts, other answers: a permuted task is another task
        digest = hashlib.sha256(f"{digest}\0permute={permute.label}".encode()).hexdigest()[:16]
    return PreparedTask(spec, digest, data_path, data_sha, examples, prompt, tuple(shots), shots_sha, mode,
                        permute.label if permute is not None else None)


def permuted(spec: TaskSpec, path: Path, prompt: TaskPrompt, examples: list[Example],
             permute: Permutation) -> list[Example]:
    """The task's examples under every rotation of their options (edgeeval.data.permute), for the kinds whose
    answer is one of a fixed set shown in the prompt: multiple choice (the options) and labels (the template's
    `labels`). A label task whose prompt does not list `labels` would be asked the same way every time: refused."""
    kind = kinds.get(spec.kind)
    if not (kind.lettered or kind.uses_labels) or FORMATS[spec.data.format].load_repeated is not None:
        raise ConfigError(f"task '{spec.name}' ({path}): --permute rotates the options of multiple-choice and label "
                          f"tasks; this one is {spec.kind}" + (f" in format '{spec.data.format}', whose repetitions "
                          "already shuffle its documents" if kind.lettered else ""))
    rotated = rotate_examples(examples, permute, spec.labels if kind.uses_labels else ())
    if kind.uses_labels and rotated and len({prompt.render(e) for e in rotated if e.id == rotated[0].id}) < 2:
        raise ConfigError(f"task '{spec.name}' ({path}): its prompt template ({spec.prompt}) does not list the labels "
                          "from the variable `labels`, so every rotation would ask the same question; --permute needs "
                          "a template that shows them in order, e.g. {{ labels | join(', ') }}")
    return rotated


def user_template(spec: TaskSpec, mode: str) -> str:
    """The user-message template of a task in a mode: the [loglik] section's own, if it names one."""
    if mode == "loglik" and spec.loglik is not None and spec.loglik.prompt:
        return spec.loglik.prompt
    return spec.prompt


def few_shot_turns(root: Path, spec: TaskSpec, prompt: TaskPrompt,
                   examples: list[Example]) -> tuple[list[tuple[str, str]], str | None]:
    """The first `count` examples of the task's few-shot file (relative to the task's `root`) as (user,
    assistant) turns, and the file's sha256. A few-shot example that is also a test item (the same
    rendered prompt) is an error."""
    if spec.few_shot is None:
        return [], None
    path = root / spec.few_shot.path
    shots = load_examples(path, spec.data, spec.labels)
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


def prepare_model(project: Project, name: str, settings: EngineSettings | None = None) -> PreparedModel:
    """A model ready to plan for: its file found, read and hashed, its chat template loaded, and its retrieval
    index (if any) opened; `settings` are the run's engine settings (an embedding retriever runs with them)."""
    spec = project.config.models[name]
    path, info, sha = checked_model_file(project, name)
    # llama.cpp adds the BOS token itself when it tokenizes, so templates get an empty bos_token;
    # the EOS text is real (multi-turn Llama-2/Mistral prompts close earlier turns with it).
    try:
        chat = load_chat_template(spec.chat_template, info.chat_template, "", info.eos_token or "",
                                  chat_template_root(project, spec.chat_template))
    except TemplateError as exc:
        raise TemplateError(f"model '{name}' ({path}): {exc}") from None
    n_ctx = min(spec.n_ctx, info.context_length or spec.n_ctx)
    retrieval = None if spec.retrieval is None else prepare_retrieval(project, name, spec.retrieval, n_ctx, settings)
    return PreparedModel(name, path, sha, info, chat, n_ctx, retrieval)


def chat_template_root(project: Project, template: str) -> Path:
    """Where a chat template path from models.toml resolves: the config's folder when the file is there
    (then it must stay inside that folder), else the built-in templates (prompts/chat/ in the package)."""
    local, builtin = project.root / template, BUILTIN_ROOT / template
    # Neither: the error then names the config's folder, where the user would put it.
    return BUILTIN_ROOT if not os.path.lexists(local) and os.path.lexists(builtin) else project.root


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
    failure: Failure | None = None
    """Why the prompt cannot be sent (it cannot fit the window even cut); recorded without generating."""
    continuations: tuple[tuple[str, str], ...] = ()
    """loglik: (option key, text scored after the prompt) for every option."""
    retrieval: dict | None = None
    """A retrieval arm's audit: the passages shown (ids, sources, scores), a hash of their text, leaks."""


def plan_units(model: PreparedModel, task: PreparedTask,
               tokens: TokenCounter | None = None) -> tuple[list[Unit], bool]:
    """Every example's unit: its prompt (fitted to the window by the task's context policy; `tokens`, the model's
    tokenizer, for the rules that count its tokens), the prompt's hash, and what loglik mode scores."""
    units, folded = [], False
    budget = model.n_ctx - task.spec.max_tokens
    # The start of the assistant's reply, sent with the prompt: loglik's answer prefix, or the task's cue.
    reply_start = task.loglik.answer_prefix if task.mode == "loglik" else task.spec.reply_prefix

    def messages(example: Example, hits) -> list[dict[str, str]]:
        turns = task_messages(task, example)
        if model.retrieval is None:
            return turns
        # Only the question's turn gets passages; few-shot turns stay as the task wrote them.
        return turns[:-1] + [{"role": "user", "content": user_message(model.retrieval, task.prompt, example, hits)}]

    def render(example: Example, hits=()) -> str:
        return build_prompt(model.chat, messages(example, list(hits)))[0] + reply_start

    for example in task.examples:
        hits, audit = _passages(model, task, example, budget, render)
        fitted = fit(example, task.spec.context, budget, lambda ex: render(ex, hits), tokens)
        text, was_folded = build_prompt(model.chat, messages(fitted.example, hits))
        text += reply_start
        truncation = fitted.truncation
        if needs_tokenizer(task.spec.context) and task.spec.context.rule == "keep_right":
            text, truncation = keep_right(text, budget, require(tokens, task.spec.context))
        folded = folded or was_folded
        if task.mode == "loglik":
            options = loglik_continuations(task, example)
            # What is scored is part of the unit's identity: other options, another scoring rule, a new unit.
            identity = "\0".join([text, task.loglik.scoring, *(f"{k}={t}" for k, t in options)])
            units.append(Unit(example, text, prompt_hash(identity), truncation, fitted.failure, options,
                              retrieval=audit))
        else:
            units.append(Unit(example, text, prompt_hash(text), truncation, fitted.failure, retrieval=audit))
    return units, folded


def loglik_continuations(task: PreparedTask, example: Example) -> tuple[tuple[str, str], ...]:
    """What loglik mode scores after an example's prompt, as its task's kind says: (answer key, text) per option."""
    loglik_options = kinds.get(task.spec.kind).loglik_options
    assert loglik_options is not None  # TaskSpec refuses a [loglik] section for a kind without one
    try:
        labels = example.fields.get("labels") or task.spec.labels  # a permuted label task: in the order shown
        return loglik_options(task.loglik.scoring, labels, example.fields.get("options") or {})
    except ValueError as exc:
        raise DataError(f"{example.source}: example {example.id} {exc}") from None


def _passages(model: PreparedModel, task: PreparedTask, example: Example, budget: int, render) -> tuple[list, dict | None]:
    """A retrieval arm's passages for one example, fitted to the passage budget and then to the window (before
    the task's own context policy may cut anything of the task's text), and their audit; ([], None) otherwise."""
    if model.retrieval is None:
        return [], None
    policy, fields = task.spec.context, task.spec.retrieval.query
    selection = model.retrieval.select(query_text(example, fields, task.spec.name), policy.chars_per_token)
    selection = model.retrieval.fit_window(selection, lambda hits: render(example, hits), budget, policy)
    return selection.hits, model.retrieval.audit(selection, fields, policy)
