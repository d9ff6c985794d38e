"""The BM25 index of a corpus (bm25s): built once per (corpus sha256, settings) into an owner-only cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edgeeval.config.sha256_cache import cache_dir
from edgeeval.errors import DataError, EdgeevalError
from edgeeval.files import DIR_MODE, FILE_MODE, make_private_dir
from edgeeval.retrieval.corpus import Passage, corpus_sha256, load_passages

CACHE_ENV = "EDGEEVAL_CACHE_DIR"
INDEX_VERSION = 1
"""Bumped when the cached layout or the way passages are indexed changes: old caches are then rebuilt."""
BM25 = {"method": "lucene", "k1": 1.5, "b": 0.75, "stopwords": "en", "stemmer": None}
"""Fixed BM25 settings (no stemmer: results must not depend on whether PyStemmer is installed)."""


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float
    rank: int
    """1 for the best passage."""


def cache_root() -> Path:
    """Indexes live beside the other caches of edgeeval ($EDGEEVAL_CACHE_DIR, $XDG_CACHE_HOME/edgeeval, ~/.cache)."""
    return cache_dir() / "retrieval"


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


def index_key(corpus_sha: str, settings: dict) -> str:
    payload = json.dumps({"corpus_sha256": corpus_sha, "version": INDEX_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


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
    if (where / "meta.json").is_file():
        try:
            return Bm25Index(bm25s.BM25.load(str(where / "bm25"), show_progress=False), read_passages(where),
                             key, corpus_sha, built=False)
        except (OSError, ValueError, KeyError, DataError) as exc:  # a damaged cache entry is rebuilt, not trusted
            shutil.rmtree(where, ignore_errors=True)
            if progress:
                print(f"edgeeval: rebuilding the damaged index cache {where} ({type(exc).__name__})")
    passages = load_passages(corpus, chunk_words, chunk_overlap)
    model = bm25s.BM25(method=BM25["method"], k1=BM25["k1"], b=BM25["b"])
    model.index(_tokenize_with_bar(passages, progress), show_progress=False)
    _save(where, lambda tmp: model.save(str(tmp / "bm25"), show_progress=False), passages,
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


def _save(where: Path, write: Callable[[Path], None], passages: list[Passage], meta: dict) -> None:
    """Write the index (`write(folder)` writes the retriever's own files) into a private temporary folder,
    then rename it into place (a crash leaves no half index; two processes building the same one both
    succeed)."""
    make_private_dir(where.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
    try:
        os.chmod(tmp, DIR_MODE)
        write(tmp)
        with (tmp / "passages.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in passages)
        (tmp / "meta.json").write_text(json.dumps({**meta, "passages": len(passages)}, indent=2, sort_keys=True))
        _private_tree(tmp)
        try:
            os.rename(tmp, where)
        except OSError:
            if not (where / "meta.json").is_file():
                raise
    except OSError as exc:
        raise EdgeevalError(f"cannot write the retrieval index cache {where}: {exc.strerror or exc} "
                            f"(set {CACHE_ENV} to another folder)") from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def _private_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def read_passages(where: Path) -> list[Passage]:
    try:
        with (where / "passages.jsonl").open(encoding="utf-8") as handle:
            return [Passage(**json.loads(line)) for line in handle if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{where}: unreadable cached passages ({type(exc).__name__})") from None
