"""Configuration: models.toml and task TOMLs read into frozen, validated pydantic models."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeeval import kinds
from edgeeval.config.gguf import GGUFInfo, read_gguf_metadata
from edgeeval.config.sha256_cache import cached_sha256
from edgeeval.errors import ConfigError, ModelFileError
from edgeeval.files import reading

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODELS_DIR_ENV = "EDGEEVAL_MODELS_DIR"
DEFAULT_MODELS_DIR = "~/models"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetrievalSpec(Frozen):
    """Retrieval for a model entry: passages from a local corpus placed in every prompt (edgeeval.retrieval)."""

    corpus: str
    """A folder of .txt/.md/.jsonl files, or one .jsonl file (`id`, `title`, and `text` or `content` per line, as
    MedRAG's corpora); relative to the folder of models.toml, or absolute, or '~/...'."""
    retriever: Literal["bm25", "embedding"] = "bm25"
    """'bm25' (bm25s, in the driver process), or 'embedding': cosine similarity of mean-pooled embeddings from
    the GGUF entry `embedding_model`, run by llama.cpp in a worker process (edgeeval.retrieval.embedding)."""
    k: int = Field(default=5, ge=1, le=50)
    """How many passages each prompt gets at most (fewer when the passage budget or the window is full)."""
    chunk_words: int = Field(default=150, ge=20, le=4000)
    """Corpus documents are cut into passages of this many words."""
    chunk_overlap: int = Field(default=30, ge=0, le=2000)
    """Words shared by consecutive passages of one document."""
    passage_tokens: int = Field(default=1024, ge=32, le=1_048_576)
    """The most (estimated) tokens all passages of one prompt may take; must be below the model's window."""
    exclude_leaks: bool = False
    """Leave out, for the items concerned, passages that contain the item's own question text (near-duplicates)."""
    leak_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    """A passage is a near-duplicate of an item when it holds this share of the item's query's 5-word shingles."""
    embedding_model: str | None = None
    """retriever 'embedding': the models.toml entry (a GGUF) that embeds passages and queries."""
    template: str = "prompts/retrieval.j2"
    """The template placing passages before the task's user message (unless the task's template places `passages`)."""

    @model_validator(mode="after")
    def _consistent(self) -> "RetrievalSpec":
        if self.chunk_overlap >= self.chunk_words:
            raise ValueError(f"retrieval chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_words "
                             f"({self.chunk_words})")
        if self.retriever == "embedding" and not self.embedding_model:
            raise ValueError("retriever 'embedding' needs 'embedding_model' (a models.toml entry)")
        if self.retriever == "bm25" and self.embedding_model:
            raise ValueError("'embedding_model' applies to retriever 'embedding' only")
        return self


class ModelSpec(Frozen):
    """One GGUF model: where its file is, where a person gets it, and how to format its prompts."""

    path: str | None = None
    """The GGUF file: absolute, '~/...', or relative to the models directory. Exclusive with `package`."""
    package: str | None = None
    """A Python package that ships the GGUF (the bundled demo models). Exclusive with `path`."""
    file: str | None = None
    """With `package`: the GGUF's file name inside the package (or the file its `assemble()` writes)."""
    source: str = ""
    """Where a person gets the file (a public repository name); edgeeval never downloads it."""
    family: Literal["general", "biomedical"]
    """'general' or 'biomedical' (the study's two arms)."""
    base: str | None = None
    """For a fine-tune: the name of the model it was trained from."""
    chat_template: str = "gguf"
    """'gguf' (the file's own tokenizer.chat_template), 'none' (plain completion, for base models),
    or a template path such as 'prompts/chat/llama3.j2' for files that carry none: relative to the
    folder of models.toml when the file is there, else to the built-in templates."""
    sha256: str | None = None
    """Expected sha256 of the file; checked by `edgeeval models --verify` and before a run."""
    n_ctx: int = Field(default=4096, ge=256, le=1_048_576)
    """Context window to allocate, in tokens."""
    description: str = ""
    base_model: str | None = None
    """Another entry whose file and settings this one runs (keys given here override them): an arm such as
    the general model plus retrieval."""
    retrieval: RetrievalSpec | None = None
    """Passages from a local corpus in every prompt; see RetrievalSpec."""

    @field_validator("chat_template")
    @classmethod
    def _template_kind(cls, value: str) -> str:
        if value in ("gguf", "none") or value.endswith(".j2") or value.endswith(".jinja"):
            return value
        raise ValueError("must be 'gguf', 'none' or a template path ending in .j2")


class Pair(Frozen):
    """A general model and its biomedical fine-tune, compared on the same examples."""

    baseline: str
    """The general model (the reference arm)."""
    candidate: str
    """The biomedical fine-tune being judged against the baseline."""
    description: str = ""


class ModelsConfig(Frozen):
    """The whole models.toml."""

    models: dict[str, ModelSpec]
    pairs: dict[str, Pair] = {}


DataFormat = Literal[
    "multiple_choice", "medmcqa", "pubmedqa", "mednli", "meqsum", "problem_summary", "medisumqa",
    "medisumcode", "longhealth",
]
# Data keys that only one loader reads; setting them for another format is a mistake worth reporting.
_FORMAT_KEYS = {
    "answer_index_base": "medmcqa",
    "documents": "longhealth",
    "distractors": "longhealth",
    "unanswerable_option": "longhealth",
}


class DataSpec(Frozen):
    """Where a task's examples come from."""

    path: str
    """The bundled sample, relative to the task's root (see TaskSpec.prompt); `--data TASK=PATH` points
    at the real file."""
    format: DataFormat = "multiple_choice"
    """Which loader reads it (edgeeval.formats.LOADERS)."""
    answer_index_base: Literal[0, 1] = 1
    """medmcqa: the number of the first option in `cop`. The released JSON-lines files number them 1-4;
    a Hugging Face `datasets` export (ClassLabel a-d) numbers them 0-3."""
    documents: Literal["patient", "answer_and_distractors", "distractors_only"] = "patient"
    """longhealth: which documents accompany a question. 'patient': all of the patient's documents, those
    holding the answer first (task 1); 'answer_and_distractors': the answer's documents plus other patients'
    documents (task 2); 'distractors_only': other patients' documents only, so the question cannot be
    answered (task 3)."""
    distractors: int = Field(default=10, ge=0, le=200)
    """longhealth: how many other patients' documents to add, chosen deterministically per question."""
    unanswerable_option: str | None = None
    """longhealth: text of an extra last option saying the documents do not answer the question."""

    @model_validator(mode="after")
    def _format_keys(self) -> "DataSpec":
        for key, owner in _FORMAT_KEYS.items():
            if key in self.model_fields_set and self.format != owner:
                raise ValueError(f"'{key}' applies to format '{owner}' only (this data is '{self.format}')")
        if self.documents == "distractors_only" and not self.unanswerable_option:
            raise ValueError("documents 'distractors_only' needs 'unanswerable_option' (the answer to give)")
        return self


class FewShotSpec(Frozen):
    """Solved examples shown before each question, as earlier user/assistant turns."""

    path: str
    """A small file in the task's data format, relative to the task's root; never the test file."""
    count: int = Field(ge=1, le=16)
    """How many: the file's first `count` examples, in file order (deterministic)."""
    answer: str = "{{ gold }}"
    """Jinja text of the assistant's turn; sees the example's fields and `gold`."""


class ContextSpec(Frozen):
    """What to do with a prompt longer than the model's context window. Never silent: a cut prompt is
    recorded in its record's `truncation`, a prompt that cannot fit is an error record."""

    policy: Literal["skip", "truncate"] = "skip"
    """'skip': send the prompt whole; one the model's tokenizer finds too long is recorded as a
    `prompt_too_long` error. 'truncate': cut `field` by `rule` until the prompt fits (estimated)."""
    field: str | None = None
    """truncate: the template variable that is cut (the long documents, never the question)."""
    rule: Literal["drop_middle", "drop_documents"] = "drop_middle"
    """'drop_middle': keep the head and the tail of a text field, drop its middle. 'drop_documents': the
    field is a list of documents; drop the least relevant ones, then cut the last kept one's tail."""
    chars_per_token: float = Field(default=3.0, gt=0.5, le=10.0)
    """The token estimate: characters per token (lower is more cautious; English prose runs 3.5-4.5)."""

    @model_validator(mode="after")
    def _field_for_truncate(self) -> "ContextSpec":
        if self.policy == "truncate" and not self.field:
            raise ValueError("policy 'truncate' needs 'field' (the template variable to cut)")
        return self


class LoglikSpec(Frozen):
    """How `--mode loglik` scores a task: the model reads the prompt once and every answer option is
    scored by its log-probability as the assistant's reply; nothing is generated, nothing parsed."""

    scoring: Literal["letter", "full_text"] = "full_text"
    """'letter': the options' letters are the continuations (one pass over the prompt and the letters'
    logits at its end when each letter is one token); 'full_text': each option's text is a continuation
    (label tasks: each label)."""
    normalization: Literal["mean", "sum"] = "mean"
    """Which score picks the answer: 'mean' (per-token mean log-probability, as llama-perplexity) or
    'sum' (total log-probability, lm-eval's `acc`). Records keep both."""
    prompt: str | None = None
    """A user-message template for this mode (relative to the task's root); default: the task's."""
    answer_prefix: str = ""
    """Text of the assistant's reply before the option, e.g. 'The answer is ' when the prompt asks for it."""


class TaskRetrievalSpec(Frozen):
    """How a model with retrieval queries the corpus for this task's examples."""

    query: list[str] = ["question"]
    """The example fields that form the query, joined by blank lines: by default the question alone, never the
    options or the answer."""


class TaskSpec(Frozen):
    """One clinical task: its data, prompt, generation settings and metrics."""

    name: str
    description: str = ""
    kind: str
    """How outputs are parsed and scored (edgeeval.kinds): 'multiple_choice' (an option letter), 'label' (one
    word of `labels`), 'summary' (free text vs a reference), 'icd_coding' (ICD-10-CM codes), 'abstention' (the
    right answer is to say the documents do not answer the question)."""
    labels: list[str] = []
    """kind 'label': the allowed answers; a gold label outside them is a data error."""
    prompt: str
    """The Jinja template for the user message, relative to the task's root, which it must stay inside:
    the folder above benchmarks/ for a task in <root>/benchmarks/clinical/ (the built-in tasks, a
    project laid out like the repository), else the --tasks-dir folder holding the TOML."""
    system: str = ""
    """System text placed before the user message (folded into the user turn for templates without a system role)."""
    max_tokens: int = Field(default=256, ge=1, le=32768)
    """Maximum new tokens per answer."""
    stop: list[str] = []
    """Stop strings ending an answer (the model's end-of-turn token always stops)."""
    metrics: list[str] = ["accuracy", "invalid_rate"]
    """What is reported; each must be one of the kind's metrics (edgeeval.kinds)."""
    few_shot: FewShotSpec | None = None
    """Solved examples before each question; none when absent."""
    context: ContextSpec = ContextSpec()
    """What to do with prompts longer than the model's window."""
    rouge_stemmer: bool = False
    """kind 'summary': Porter-stem words before ROUGE. CLUE scored with Hugging Face evaluate's rouge,
    whose default is no stemming."""
    loglik: LoglikSpec | None = None
    """How the task is scored with `--mode loglik`; a task without it runs in generation mode only."""
    retrieval: TaskRetrievalSpec = TaskRetrievalSpec()
    """For models with retrieval: which fields form the query. Few-shot turns never get passages."""
    data: DataSpec

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in kinds.KINDS:
            raise ValueError(f"unknown kind (kinds: {', '.join(kinds.KINDS)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TaskSpec":
        kind = kinds.get(self.kind)
        wrong = [m for m in self.metrics if m not in kind.metric_names]
        if wrong:
            raise ValueError(f"metrics {wrong} do not apply to kind '{self.kind}' "
                             f"(allowed: {', '.join(kind.metric_names)})")
        if kind.uses_labels and len(self.labels) < 2:
            raise ValueError(f"kind '{self.kind}' needs 'labels' (at least two)")
        if not kind.uses_labels and self.labels:
            users = [k.name for k in kinds.KINDS.values() if k.uses_labels]
            raise ValueError(f"'labels' applies to kind {', '.join(repr(u) for u in users)} only")
        if self.loglik is not None and kind.loglik_options is None:
            able = ", ".join(k.name for k in kinds.KINDS.values() if k.loglik_options is not None)
            raise ValueError(f"'loglik' applies to kinds {able} only (this task is '{self.kind}': "
                             "its answers are free text)")
        if self.loglik is not None and self.loglik.scoring == "letter" and not kind.lettered:
            raise ValueError(f"loglik scoring 'letter' needs lettered options; a {self.kind} task scores its "
                             "answers as 'full_text'")
        return self


class Project(Frozen):
    """Everything a command needs: the parsed config and the directories it resolves against."""

    config_path: Path
    root: Path
    """The folder of models.toml: its chat template paths resolve here first (then the built-in ones),
    and its benchmarks/clinical/ tasks, if it has some, join the built-in tasks."""
    models_dir: Path
    config: ModelsConfig
    tasks_dirs: tuple[Path, ...] = ()
    """The user's task folders (--tasks-dir, $EDGEEVAL_TASKS_DIRS), in order: a later one's task replaces
    an earlier one's, or a built-in, of the same name."""


def _read_toml(path: Path) -> dict:
    try:
        with reading(path, ConfigError, "file"), path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _explain(path: Path, exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    """One line naming the file, the key and what was allowed, from pydantic's first error."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, err["loc"][:-1])
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return ConfigError(f"{path}: unknown key '{loc}' (allowed here: {allowed})")
    if err["type"] == "missing":
        return ConfigError(f"{path}: missing required key '{loc}'")
    if not loc:  # a rule across keys: the message names them; the input is the whole file
        return ConfigError(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return ConfigError(f"{path}: key '{loc}': {err['msg']} (got {err.get('input')!r})")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at `loc` (dict keys in loc are skipped)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            continue
        annotation = current.model_fields[part].annotation
        args = getattr(annotation, "__args__", ())
        nested = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[-1] if nested else None
    return current


def load_models_config(path: Path, models_dir: str | None = None, tasks_dirs: tuple[Path, ...] = ()) -> Project:
    """Read models.toml; check that every pair names known models."""
    path = path.expanduser().resolve()
    raw = _read_toml(path)
    _inherit_base_models(path, raw)
    try:
        config = ModelsConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc, ModelsConfig) from None
    for name, spec in config.models.items():
        if (spec.path is None) == (spec.package is None):
            raise ConfigError(f"{path}: model '{name}' needs exactly one of 'path' or 'package'")
        if spec.package is not None and spec.file is None:
            raise ConfigError(f"{path}: model '{name}' names a package but no 'file'")
        if spec.base is not None and spec.base not in config.models:
            raise ConfigError(f"{path}: model '{name}' has base '{spec.base}', which is not a model in this file")
        _check_retrieval(path, name, spec, config)
    for name, pair in config.pairs.items():
        for role in ("baseline", "candidate"):
            target = getattr(pair, role)
            if target not in config.models:
                known = ", ".join(config.models)
                raise ConfigError(f"{path}: pair '{name}' {role} '{target}' is not a model in this file (models: {known})")
    chosen = models_dir or os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR
    return Project(config_path=path, root=path.parent, models_dir=Path(chosen).expanduser(), config=config,
                   tasks_dirs=tuple(tasks_dirs))


# What an entry with `base_model` takes from that model unless it sets the key itself.
_INHERITED = ("path", "package", "file", "source", "family", "base", "chat_template", "sha256", "n_ctx")


def _inherit_base_models(path: Path, raw: dict) -> None:
    """Fill entries that name a `base_model` with that model's file and settings (in place, before validation)."""
    models = raw.get("models")
    if not isinstance(models, dict):
        return
    for name, entry in models.items():
        if not isinstance(entry, dict) or "base_model" not in entry:
            continue
        base = entry["base_model"]
        if not isinstance(base, str) or not isinstance(models.get(base), dict):
            raise ConfigError(f"{path}: model '{name}' has base_model {base!r}, which is not a model in this file "
                              f"(models: {', '.join(models)})")
        if "base_model" in models[base]:
            raise ConfigError(f"{path}: model '{name}' has base_model '{base}', which itself has a base_model; "
                              "name the model with the file instead")
        inherited = {key: value for key, value in models[base].items() if key in _INHERITED}
        if "path" in entry or "package" in entry:  # the entry names its own file: take none of the base's
            inherited = {k: v for k, v in inherited.items() if k not in ("path", "package", "file")}
        models[name] = {**inherited, **entry}


def _check_retrieval(path: Path, name: str, spec: ModelSpec, config: ModelsConfig) -> None:
    retrieval = spec.retrieval
    if retrieval is None:
        return
    if retrieval.passage_tokens >= spec.n_ctx:
        raise ConfigError(f"{path}: model '{name}' retrieval.passage_tokens ({retrieval.passage_tokens}) is not "
                          f"smaller than its context window n_ctx ({spec.n_ctx})")
    embedder = retrieval.embedding_model
    if embedder is not None and embedder not in config.models:
        raise ConfigError(f"{path}: model '{name}' retrieval.embedding_model '{embedder}' is not a model in this file")
    if embedder is not None and config.models[embedder].retrieval is not None:
        raise ConfigError(f"{path}: model '{name}' retrieval.embedding_model '{embedder}' is itself a retrieval entry; "
                          "name the plain model")


def load_task(path: Path) -> TaskSpec:
    """Read one task TOML; the task's name defaults to the file's stem."""
    raw = _read_toml(path)
    raw.setdefault("name", path.stem)
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc, TaskSpec) from None


def task_hash(spec: TaskSpec, template_text: str, data_sha256: str) -> str:
    """Changes whenever the task definition, its prompt template or its data file changes."""
    # The loglik section shapes loglik runs only (their hash adds the mode); generation records stay valid.
    # The retrieval query shapes only retrieval prompts, whose prompt hashes cover the passages it finds.
    payload = spec.model_dump_json(exclude={"loglik", "retrieval"}) + "\0" + template_text + "\0" + data_sha256
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checked_model_file(project: Project, name: str) -> tuple[Path, GGUFInfo, str]:
    """Model `name`'s GGUF: found, read with edgeeval's own reader (a file that is not a GGUF is refused,
    naming it) and hashed (the hash cached), its sha256 checked against the entry's when it has one."""
    path = resolve_model_path(project, name)
    info = read_gguf_metadata(path)
    sha = cached_sha256(path)
    expected = project.config.models[name].sha256
    if expected and expected.lower() != sha:
        raise ConfigError(f"model '{name}': {path} has sha256 {sha}, but models.toml expects {expected}")
    return path, info, sha


def resolve_model_path(project: Project, name: str) -> Path:
    """The GGUF file of model `name`, which must exist; the error says where it was looked for."""
    spec = project.config.models[name]
    if spec.package is not None:
        return _package_model_path(name, spec)
    assert spec.path is not None  # load_project: exactly one of path and package
    candidate = Path(spec.path).expanduser()
    if not candidate.is_absolute():
        candidate = project.models_dir / candidate
    if not candidate.is_file():
        where = f"looked in the models directory {project.models_dir} (set --models-dir or {MODELS_DIR_ENV})"
        if Path(spec.path).expanduser().is_absolute():
            where = "the path in models.toml is absolute"
        hint = f"; get it from {spec.source}" if spec.source else ""
        raise ModelFileError(f"model '{name}': file not found: {candidate} ({where}{hint})")
    return candidate


def _package_model_path(name: str, spec: ModelSpec) -> Path:
    """A GGUF shipped inside a Python package: package data found without importing the package
    (some such packages import heavy plugins), or a file the package assembles into a cache."""
    assert spec.package is not None and spec.file is not None  # load_project checks both are set
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelFileError(
            f"model '{name}': package '{spec.package}' is not installed (run scripts/setup.sh, or pip install it)"
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / spec.file
        if candidate.is_file():
            return candidate
    module = importlib.import_module(spec.package)
    if hasattr(module, "assemble"):
        # The package writes the file into the user's cache once and verifies its sha256.
        return Path(module.assemble())
    raise ModelFileError(f"model '{name}': package '{spec.package}' has no file {spec.file}")
