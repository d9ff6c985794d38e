"""The BM25 index of a corpus (bm25s): built once per (corpus sha256, settings) into an owner-only cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeeval.retrieval.cache import cache_root, index_key, load_cached, read_passages, save_index
from edgeeval.retrieval.corpus import Passage, corpus_sha256, load_passages

BM25 = {"method": "lucene", "k1": 1.5, "b": 0.75, "stopwords": "en", "stemmer": None}
"""Fixed BM25 settings (no stemmer: results must not depend on whether PyStemmer is installed)."""


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float
    rank: int
    """1 for the best passage."""


def index_text(passage: Passage) -> str:
    """What is indexed and searched: the title and the passage (MedRAG indexes 'title. content' too)."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


def tokenize(texts: list[str], progress: bool = False):
    import bm25s

    return bm25s.tokenize(texts, stopwords=BM25["stopwords"], return_ids=False, show_progress=progress)


class Bm25Index:
    """BM25 over a corpus's passages; `built` says whether this process built it or found it cached."""

    kind = "bm25"

    def __init__(self, model, passages: list[Passage], key: str, corpus_sha: str, built: bool):
        self.model = model
        self.passages = passages
        self.key = key
        self.corpus_sha256 = corpus_sha
        self.built = built

    def search(self, query: str, k: int) -> list[Hit]:
        """The best `k` passages with a positive score, best first (ties: lower passage index first)."""
        tokens = [t for t in tokenize([query])[0] if t in self.model.vocab_dict]
        if not tokens or k < 1:
            return []
        ids, scores = self.model.retrieve([tokens], k=min(k, len(self.passages)), show_progress=False)
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
        return [Hit(self.passages[i], s, rank) for rank, (i, s) in enumerate(hits, start=1)]


def bm25_settings(chunk_words: int, chunk_overlap: int) -> dict:
    import bm25s

    return {"retriever": "bm25", "chunk_words": chunk_words, "chunk_overlap": chunk_overlap, "bm25": BM25,
            "bm25s": bm25s.__version__}


def open_bm25(corpus: Path, chunk_words: int, chunk_overlap: int, progress: bool = True,
              cache: Path | None = None) -> Bm25Index:
    """The corpus's BM25 index: loaded from the cache when the corpus and settings are unchanged, else built
    (with a progress bar) and cached owner-only, since passages may hold patient text."""
    import bm25s

    corpus_sha = corpus_sha256(corpus)
    key = index_key(corpus_sha, bm25_settings(chunk_words, chunk_overlap))
    where = (cache or cache_root()) / key

    def load(folder: Path) -> Bm25Index:
        return Bm25Index(bm25s.BM25.load(str(folder / "bm25"), show_progress=False), read_passages(folder), key,
                         corpus_sha, built=False)

    found = load_cached(where, load, progress)
    if found is not None:
        return found
    passages = load_passages(corpus, chunk_words, chunk_overlap)
    model = bm25s.BM25(method=BM25["method"], k1=BM25["k1"], b=BM25["b"])
    model.index(_tokenize_with_bar(passages, progress), show_progress=False)
    save_index(where, lambda tmp: model.save(str(tmp / "bm25"), show_progress=False), passages,
               {"corpus": str(corpus), "corpus_sha256": corpus_sha, **bm25_settings(chunk_words, chunk_overlap)})
    return Bm25Index(model, passages, key, corpus_sha, built=True)


_BAR_FROM = 2000
"""Corpora of fewer passages are indexed in well under a second: no bar."""


def _tokenize_with_bar(passages: list[Passage], progress: bool) -> list[list[str]]:
    from tqdm import tqdm

    tokens: list[list[str]] = []
    step = 5000
    with tqdm(total=len(passages), desc="indexing corpus", unit="passage", dynamic_ncols=True,
              disable=not progress or len(passages) < _BAR_FROM) as bar:
        for start in range(0, len(passages), step):
            batch = passages[start:start + step]
            tokens += tokenize([index_text(p) for p in batch])
            bar.update(len(batch))
    return tokens


