"""The owner-only cache of corpus indexes (BM25 and embedding alike): where an index lives (a key over the corpus
sha256 and every setting it depends on), loading one back (a damaged one is rebuilt, never trusted) and saving
one atomically. Passages may hold patient text, so every file is the owner's only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TypeVar

from edgeeval.config.sha256_cache import cache_dir
from edgeeval.errors import DataError, EdgeevalError
from edgeeval.files import DIR_MODE, FILE_MODE, make_private_dir
from edgeeval.retrieval.corpus import Passage

CACHE_ENV = "EDGEEVAL_CACHE_DIR"
INDEX_VERSION = 1
"""Bumped when the cached layout or the way passages are indexed changes: old caches are then rebuilt."""
T = TypeVar("T")


def cache_root() -> Path:
    """Indexes live beside the other caches of edgeeval ($EDGEEVAL_CACHE_DIR, $XDG_CACHE_HOME/edgeeval, ~/.cache)."""
    return cache_dir() / "retrieval"


def index_key(corpus_sha: str, settings: dict[str, Any]) -> str:
    payload = json.dumps({"corpus_sha256": corpus_sha, "version": INDEX_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def load_cached(where: Path, load: Callable[[Path], T], progress: bool) -> T | None:
    """The index cached at `where`, loaded by `load`; None when there is none yet, or when it is damaged (then
    it is removed, to be rebuilt)."""
    if not (where / "meta.json").is_file():
        return None
    try:
        return load(where)
    except (OSError, ValueError, KeyError, DataError) as exc:
        shutil.rmtree(where, ignore_errors=True)
        if progress:
            print(f"edgeeval: rebuilding the damaged index cache {where} ({type(exc).__name__})")
        return None


def save_index(where: Path, write: Callable[[Path], None], passages: list[Passage], meta: dict[str, Any]) -> None:
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
        private_tree(tmp)
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


def private_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def read_passages(where: Path) -> list[Passage]:
    try:
        with (where / "passages.jsonl").open(encoding="utf-8") as handle:
            return [Passage(**json.loads(line)) for line in handle if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{where}: unreadable cached passages ({type(exc).__name__})") from None
