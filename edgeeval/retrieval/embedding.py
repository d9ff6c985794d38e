"""The embedding index of a corpus: every passage embedded by a GGUF model (llama.cpp, in a worker process, as
the models answering are), searched by cosine similarity. Built once per (corpus sha256, embedding model
sha256, settings) into the owner-only cache, like the BM25 index.

The embedding is the mean of the model's last hidden state over a text's tokens (llama.cpp's MEAN pooling),
scaled to unit length; a text is cut to its first EMBED_TOKENS tokens (a passage of the default 150 words
is about 200-250 tokens). Any GGUF llama.cpp can load will embed this way; a model trained for embeddings
(an embedding GGUF) ranks better than a chat model, whose vectors mostly point the same way."""

from __future__ import annotations

from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np

from edgeeval.engine import EngineError, EngineSettings
from edgeeval.errors import EdgeevalError
from edgeeval.retrieval.cache import cache_root, index_key, load_cached, read_passages, save_index
from edgeeval.retrieval.corpus import Passage, corpus_sha256, load_passages
from edgeeval.retrieval.index import Hit, index_text

EMBED_TOKENS = 512
"""The embedding context: the most tokens of one passage or query that are read."""
EMBED_SEQUENCES = 16
"""Passages embedded together in one decode."""
_REQUEST = 64
"""Passages per request to the worker (the progress bar moves by this much)."""


def embedding_settings(engine: EngineSettings | None) -> EngineSettings:
    """The run's engine settings (backend, threads, safe mode) with the embedding context's sizes."""
    base = engine or EngineSettings()
    return replace(base, n_ctx=EMBED_TOKENS, n_batch=EMBED_TOKENS, n_ubatch=EMBED_TOKENS, n_seq_max=EMBED_SEQUENCES,
                   speculative="none", draft_model=None)


def index_settings(chunk_words: int, chunk_overlap: int, model_sha256: str, backend: str) -> dict:
    """What the cached vectors depend on (the index key): change any and the index is rebuilt."""
    try:
        llama = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        llama = None
    return {"retriever": "embedding", "chunk_words": chunk_words, "chunk_overlap": chunk_overlap,
            "model_sha256": model_sha256, "backend": backend, "tokens": EMBED_TOKENS, "pooling": "mean",
            "normalized": True, "llama_cpp_python": llama}


class EmbeddingIndex:
    """Cosine similarity between a query's embedding and every passage's; the embedding model's worker is
    started when first needed and stopped by `close` (a later search starts it again)."""

    kind = "embedding"

    def __init__(self, model_path: Path, settings: EngineSettings, vectors: np.ndarray, passages: list[Passage],
                 key: str, corpus_sha: str, built: bool, engine=None):
        self.model_path = model_path
        self.settings = settings
        self.vectors = vectors
        self.passages = passages
        self.key = key
        self.corpus_sha256 = corpus_sha
        self.built = built
        self._engine = engine

    def engine(self):
        if self._engine is None:
            self._engine = start_embedder(self.model_path, self.settings)
        return self._engine

    def search(self, query: str, k: int) -> list[Hit]:
        """The best `k` passages by cosine similarity, best first (ties: lower passage index first)."""
        if k < 1 or not query.strip() or not len(self.passages):
            return []
        q = np.asarray(embed(self.engine(), [query], self.model_path)[0], dtype=np.float32)
        scores = self.vectors @ q
        top = np.argsort(-scores, kind="stable")[: min(k, len(self.passages))]
        return [Hit(self.passages[i], float(scores[i]), rank) for rank, i in enumerate(top.tolist(), start=1)]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def start_embedder(model_path: Path, settings: EngineSettings):
    from edgeeval.engine.worker import WorkerEngine

    return WorkerEngine(model_path, settings)


def embed(engine, texts: list[str], model_path: Path) -> list[list[float]]:
    try:
        return engine.embed(texts)
    except EngineError as exc:
        raise EdgeevalError(f"embedding model {model_path}: {exc.kind.value}: {exc.detail}") from None


def open_embedding(corpus: Path, chunk_words: int, chunk_overlap: int, model_path: Path, model_sha256: str,
                   engine: EngineSettings | None = None, progress: bool = True,
                   cache: Path | None = None) -> EmbeddingIndex:
    """The corpus's embedding index: loaded from the cache when the corpus, the model and the settings are
    unchanged, else built (the passages embedded with a progress bar) and cached owner-only."""
    settings = embedding_settings(engine)
    corpus_sha = corpus_sha256(corpus)
    described = index_settings(chunk_words, chunk_overlap, model_sha256, settings.backend)
    key = index_key(corpus_sha, described)
    where = (cache or cache_root()) / key

    def load(folder: Path) -> EmbeddingIndex:
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        passages = read_passages(folder)
        if vectors.ndim != 2 or vectors.shape[0] != len(passages):
            raise ValueError("vectors and passages disagree")
        return EmbeddingIndex(model_path, settings, vectors, passages, key, corpus_sha, built=False)

    found = load_cached(where, load, progress)
    if found is not None:
        return found
    passages = load_passages(corpus, chunk_words, chunk_overlap)
    engine_ = start_embedder(model_path, settings)
    try:
        vectors = _embed_all(engine_, passages, model_path, progress)
        save_index(where, lambda tmp: np.save(tmp / "vectors.npy", vectors, allow_pickle=False), passages,
              {"corpus": str(corpus), "corpus_sha256": corpus_sha, "model": str(model_path), **described})
    except BaseException:
        engine_.close()
        raise
    return EmbeddingIndex(model_path, settings, vectors, passages, key, corpus_sha, built=True, engine=engine_)


def _embed_all(engine, passages: list[Passage], model_path: Path, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    rows: list[list[float]] = []
    with tqdm(total=len(passages), desc="embedding corpus", unit="passage", dynamic_ncols=True,
              disable=not progress) as bar:
        for start in range(0, len(passages), _REQUEST):
            batch = passages[start:start + _REQUEST]
            rows += embed(engine, [index_text(p) for p in batch], model_path)
            bar.update(len(batch))
    return np.asarray(rows, dtype=np.float32)
