"""A retrieval arm made ready for planning: its corpus found, its index opened (or built once and cached), its
template loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeeval.config.locations import BUILTIN_ROOT
from edgeeval.config.model_files import checked_model_file
from edgeeval.config.models import Project, RetrievalSpec
from edgeeval.engine import EngineSettings
from edgeeval.errors import ConfigError
from edgeeval.prompting.prompts import TaskPrompt
from edgeeval.retrieval.augment import Retrieval

if TYPE_CHECKING:
    from edgeeval.retrieval.embedding import EmbeddingIndex
    from edgeeval.retrieval.index import Bm25Index


def corpus_path(project: Project, spec: RetrievalSpec) -> Path:
    """The corpus as models.toml names it: absolute, '~/...', or relative to the folder of models.toml."""
    path = Path(spec.corpus).expanduser()
    return path if path.is_absolute() else project.root / path


def prepare_retrieval(project: Project, model: str, spec: RetrievalSpec, n_ctx: int,
                      engine: EngineSettings | None = None, progress: bool = True) -> Retrieval:
    """The model's retrieval, its index opened (or built once and cached); errors say what and where."""
    if spec.passage_tokens >= n_ctx:
        raise ConfigError(f"{project.config_path}: model '{model}' retrieval.passage_tokens ({spec.passage_tokens}) "
                          f"is not smaller than its context window ({n_ctx} tokens)")
    corpus = corpus_path(project, spec)
    # The template resolves like a chat template: the config's folder first, then the built-in prompts.
    local = (project.root / spec.template).exists()
    template = TaskPrompt(Path(spec.template), root=project.root if local else BUILTIN_ROOT)
    index: Bm25Index | EmbeddingIndex
    if spec.retriever == "embedding":
        from edgeeval.retrieval.embedding import open_embedding

        path, sha = embedding_model(project, spec)
        index = open_embedding(corpus, spec.chunk_words, spec.chunk_overlap, path, sha, engine, progress=progress)
    else:
        from edgeeval.retrieval.index import open_bm25

        index = open_bm25(corpus, spec.chunk_words, spec.chunk_overlap, progress=progress)
    return Retrieval(spec, corpus, index, template)


def embedding_model(project: Project, spec: RetrievalSpec) -> tuple[Path, str]:
    """The embedding model's GGUF (its models.toml entry), read and checked like any model's, and its sha256."""
    assert spec.embedding_model is not None  # RetrievalSpec requires it for retriever 'embedding'
    path, _, sha = checked_model_file(project, spec.embedding_model)
    return path, sha
