"""Files: reading with one-line errors that name the file and what it was for, and writing owner-only (run
directories, reports and caches may hold patient text)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from edgeeval.errors import EdgeevalError

DIR_MODE = 0o700
FILE_MODE = 0o600


# --- reading -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def reading(path: Path | str, error: type[EdgeevalError], what: str) -> Iterator[None]:
    """Inside the block, a failure to open or read `path` (missing, a directory, no permission, an I/O error,
    or bytes that are not UTF-8) becomes `error` in one line: '{path}: {what} not found', and so on."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: {why_unreadable(exc, what)}") from None


def why_unreadable(exc: OSError, what: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{what} not found"
    if isinstance(exc, IsADirectoryError):
        return f"cannot read {what}: it is a directory"
    if isinstance(exc, PermissionError):
        return f"permission denied (cannot read {what})"
    return f"cannot read {what} ({exc.strerror or exc})"


def read_text(path: Path, error: type[EdgeevalError], what: str) -> str:
    """The whole file as UTF-8 text; `error` names the file when it cannot be read or decoded."""
    with reading(path, error, what):
        return path.read_text(encoding="utf-8")


def read_bytes(path: Path, error: type[EdgeevalError], what: str) -> bytes:
    with reading(path, error, what):
        return path.read_bytes()


# --- writing owner-only ------------------------------------------------------------------------------------

def make_private_dir(path: Path) -> None:
    """Create a directory readable by the owner only, whatever the umask; missing parents are created
    owner-only too (a world-writable parent would let another user swap the run directory).
    EdgeevalError if the disk refuses."""
    try:
        private_dir(path)
    except OSError as exc:
        raise EdgeevalError(f"cannot create directory {path}: {exc.strerror or exc}") from None


def private_dir(path: Path) -> None:
    """`make_private_dir`, raising the OSError itself (for callers that say what the folder was for)."""
    missing = []
    for directory in [path, *path.parents]:
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)
    path.mkdir(mode=DIR_MODE, exist_ok=True)  # a file in the way is an error
    os.chmod(path, DIR_MODE)


def write_private_text(path: Path, text: str) -> None:
    """Write a whole file atomically (temp file + rename), owner-only; EdgeevalError if the disk refuses
    (full, read-only), leaving any earlier version of the file as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise EdgeevalError(f"cannot write {path}: {exc.strerror or exc}") from None
