"""Scores that need a model of their own (BERTScore's encoder), kept in the run directory so that re-scoring a run
(`edgeeval report`) reads them and never runs a model: scores/bertscore.jsonl, one line per (answer, reference,
encoder, weighting), appended owner-only. Nothing here imports the engine."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgeeval.errors import DataError, EdgeevalError
from edgeeval.files import FILE_MODE, private_dir

BERTSCORE_FILE = Path("scores") / "bertscore.jsonl"


def bertscore_key(model: str, task: str, example_id: str, repeat: int | None, candidate: str, reference: str,
                  encoder_sha256: str, idf: bool) -> str:
    """What a cached score belongs to: the answer and its reference as texts (a retried answer is another key),
    and the encoder file and weighting that scored it."""
    parts = [model, task, example_id, "" if repeat is None else str(repeat), candidate, reference, encoder_sha256,
             str(idf)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def read_bertscores(run_dir: Path) -> dict[str, tuple[float, float, float]]:
    """Every cached score by key (the last line of a key wins); an unfinished last line from a crash is skipped."""
    path = run_dir / BERTSCORE_FILE
    if not path.is_file():
        return {}
    scores = {}
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            scores[entry["key"]] = (float(entry["precision"]), float(entry["recall"]), float(entry["f1"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{number}: corrupt cached score") from None
    return scores


def append_bertscores(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Append scores ({key, precision, recall, f1, ...}) and push them to disk (a kill loses nothing written)."""
    path = run_dir / BERTSCORE_FILE
    try:
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, b"".join((json.dumps(entry, sort_keys=True) + "\n").encode() for entry in entries))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise EdgeevalError(f"cannot write {path}: {exc.strerror or exc}; the scores written so far are kept") from None
