"""models.toml: the models (GGUF files, where a person gets them, their chat format, retrieval arms) and the
pairs compared, read into frozen pydantic models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgeeval.config.locations import PUBLISHED_DIR
from edgeeval.config.reading import Frozen, read_toml, validated
from edgeeval.data.published import published_models
from edgeeval.errors import ConfigError

MODELS_DIR_ENV = "EDGEEVAL_MODELS_DIR"
DEFAULT_MODELS_DIR = "~/models"


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
    reference: str | None = None
    """The model's name in the published study's scores (benchmarks/clinical/reference/), e.g.
    'Meta-Llama-3-8B-Instruct': reports then set the paper's numbers beside this run's."""

    @field_validator("chat_template")
    @classmethod
    def _template_kind(cls, value: str) -> str:
        if value in ("gguf", "none") or value.endswith(".j2") or value.endswith(".jinja"):
            return value
        raise ValueError("must be 'gguf', 'none' or a template path ending in .j2")


class PairSpec(Frozen):
    """A general model and its biomedical fine-tune, compared on the same examples."""

    baseline: str
    """The general model (the reference arm)."""
    candidate: str
    """The biomedical fine-tune being judged against the baseline."""
    description: str = ""


class ScoringSpec(Frozen):
    """How some metrics are computed with a model of their own (models.toml's [scoring] table)."""

    bertscore_model: str | None = None
    """The models.toml entry of an encoder GGUF (a BERT model converted with llama.cpp's converter, e.g. SciBERT
    or Bio_ClinicalBERT as CLUE used) that computes BERTScore for the summary tasks, from its last layer. None:
    BERTScore is reported as not computed."""
    bertscore_idf: bool = False
    """Weigh each token by its inverse document frequency over the task's references (bert-score's `idf=True`;
    CLUE used the default, False)."""


class ModelsConfig(Frozen):
    """The whole models.toml."""

    models: dict[str, ModelSpec]
    pairs: dict[str, PairSpec] = {}
    scoring: ScoringSpec = ScoringSpec()


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


def load_models_config(path: Path, models_dir: str | None = None, tasks_dirs: tuple[Path, ...] = ()) -> Project:
    """Read models.toml; check that every pair names known models."""
    path = path.expanduser().resolve()
    raw = read_toml(path)
    _inherit_base_models(path, raw)
    config = validated(path, raw, ModelsConfig)
    for name, spec in config.models.items():
        if (spec.path is None) == (spec.package is None):
            raise ConfigError(f"{path}: model '{name}' needs exactly one of 'path' or 'package'")
        if spec.package is not None and spec.file is None:
            raise ConfigError(f"{path}: model '{name}' names a package but no 'file'")
        if spec.base is not None and spec.base not in config.models:
            raise ConfigError(f"{path}: model '{name}' has base '{spec.base}', which is not a model in this file")
        _check_retrieval(path, name, spec, config)
        _check_reference(path, name, spec)
    for name, pair in config.pairs.items():
        for role in ("baseline", "candidate"):
            target = getattr(pair, role)
            if target not in config.models:
                known = ", ".join(config.models)
                raise ConfigError(f"{path}: pair '{name}' {role} '{target}' is not a model in this file (models: {known})")
    encoder = config.scoring.bertscore_model
    if encoder is not None and (encoder not in config.models or config.models[encoder].retrieval is not None):
        raise ConfigError(f"{path}: scoring.bertscore_model '{encoder}' is not a plain model entry of this file "
                          f"(models: {', '.join(n for n, s in config.models.items() if s.retrieval is None)})")
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


def _check_reference(path: Path, name: str, spec: ModelSpec) -> None:
    if spec.reference is None:
        return
    known = published_models(PUBLISHED_DIR)
    if spec.reference not in known:
        raise ConfigError(f"{path}: model '{name}' reference '{spec.reference}' is not a model of the published "
                          f"scores in {PUBLISHED_DIR} (models: {', '.join(known)})")


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
