"""A model file read before anything runs it: its GGUF metadata (gguf_format.py), with one-line errors naming
the file, and its sha256."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from edgeeval.config.gguf_format import GGUFInfo, GGUFParser
from edgeeval.errors import ModelFileError
from edgeeval.files import reading


def read_gguf_metadata(path: Path | str) -> GGUFInfo:
    """Read and validate a GGUF file's header, metadata and tensor table; raise ModelFileError if it is
    missing, unreadable, not GGUF, corrupt, or shorter than its tensor table says (a truncated download)."""
    path = Path(path)
    check_path(path)
    with reading(path, ModelFileError, "GGUF file"), open(path, "rb", buffering=1024 * 1024) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelFileError(f"{path}: the file is empty (0 bytes), not a GGUF file")
        return GGUFParser(path, f, size).parse()


def sha256_file(path: Path | str, chunk: int = 8 * 1024 * 1024) -> str:
    """SHA-256 hex digest of a file, read `chunk` bytes at a time."""
    path = Path(path)
    check_path(path)
    h = hashlib.sha256()
    with reading(path, ModelFileError, "file"), open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_path(path: Path) -> None:
    """Fail early, with a clear message, on a missing path, a directory or a non-regular file (a FIFO would
    block open() forever)."""
    with reading(path, ModelFileError, "file"):
        st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileError(f"{path}: is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path}: is not a regular file")
