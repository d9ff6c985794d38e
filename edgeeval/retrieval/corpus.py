"""A retrieval corpus: a folder of .txt/.md/.jsonl files or one .jsonl file, read into passages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgeeval.data.readers import jsonl_rows, optional_text, read_text, required_text, row_id
from edgeeval.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
CORPUS_SUFFIXES = (*TEXT_SUFFIXES, JSONL_SUFFIX)
_JSONL_FIELDS = "one JSON object per line with 'id', 'title' and 'text' or 'content'"


@dataclass(frozen=True)
class Passage:
    """One retrievable piece of a corpus document."""

    id: str
    """'<document id>' for a document that is one passage, else '<document id>#<n>' (n from 0)."""
    source: str
    """The corpus file it came from, relative to the corpus folder (the file name for a .jsonl corpus)."""
    title: str
    text: str


def corpus_files(corpus: Path) -> list[Path]:
    """The corpus's files in a stable order; a missing, unreadable or empty corpus is a DataError."""
    if corpus.is_file():
        if corpus.suffix.lower() != JSONL_SUFFIX:
            raise DataError(f"{corpus}: a corpus file must be JSON lines (.jsonl, {_JSONL_FIELDS}); "
                            f"or give a folder of {', '.join(CORPUS_SUFFIXES)} files")
        return [corpus]
    if not corpus.exists():
        raise DataError(f"{corpus}: corpus not found (a folder of {', '.join(CORPUS_SUFFIXES)} files, or a .jsonl file)")
    try:
        files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(corpus).parts))
    except OSError as exc:
        raise DataError(f"{corpus}: cannot read corpus folder ({exc.strerror or exc})") from None
    if not files:
        raise DataError(f"{corpus}: empty corpus (no {', '.join(CORPUS_SUFFIXES)} files in it)")
    return files


def corpus_sha256(corpus: Path) -> str:
    """One digest over every file's name and bytes: any change to the corpus changes it."""
    digest = hashlib.sha256()
    root = corpus if corpus.is_dir() else corpus.parent
    for path in corpus_files(corpus):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise DataError(f"{path}: cannot read corpus file ({exc.strerror or exc})") from None
        digest.update(b"\0")
    return digest.hexdigest()


def load_passages(corpus: Path, chunk_words: int, overlap: int) -> list[Passage]:
    """Every document of the corpus cut into passages of `chunk_words` words, `overlap` shared between
    neighbours. Errors name the file (and line) and never quote the text: a corpus may hold patient notes."""
    root = corpus if corpus.is_dir() else corpus.parent
    passages: list[Passage] = []
    for path in corpus_files(corpus):
        source = str(path.relative_to(root))
        for doc_id, title, text in _documents(path, source):
            passages += [Passage(pid, source, title, chunk) for pid, chunk in _chunks(doc_id, text, chunk_words, overlap)]
    if not passages:
        raise DataError(f"{corpus}: empty corpus (its files hold no text)")
    return passages


def _documents(path: Path, source: str) -> list[tuple[str, str, str]]:
    """(id, title, text) of each document in one corpus file."""
    text = read_text(path)
    if path.suffix.lower() != JSONL_SUFFIX:
        return [(source, *_title_and_body(text, path))]
    documents = []
    for where, record in jsonl_rows(path, text):
        body = required_text(record, ("text", "content"), where, _JSONL_FIELDS)
        doc_id = row_id(record, "id", where, f"{path.stem}:{where.rsplit(':', 1)[1]}")
        documents.append((doc_id, optional_text(record, ("title",), where), body))
    return documents


def _title_and_body(text: str, path: Path) -> tuple[str, str]:
    """A Markdown file's first heading and the text after it, else the file name (without extension) and
    the whole text."""
    first, _, rest = text.lstrip().partition("\n")
    if first.startswith("#"):
        return first.lstrip("#").strip(), rest
    return path.stem.replace("_", " "), text


def _chunks(doc_id: str, text: str, size: int, overlap: int) -> list[tuple[str, str]]:
    words = text.split()
    if len(words) <= size:
        return [(doc_id, " ".join(words))] if words else []
    step = size - overlap
    starts = range(0, max(1, len(words) - overlap), step)
    return [(f"{doc_id}#{n}", " ".join(words[start:start + size])) for n, start in enumerate(starts)]
