"""The sha256 of model files, remembered on disk so a 40 GB GGUF is hashed once, not at every run and resume.

One small JSON entry per model path, in an owner-only directory of the user's cache
($EDGEEVAL_CACHE_DIR, else $XDG_CACHE_HOME/edgeeval, else ~/.cache/edgeeval; then sha256/).
An entry is trusted only while the file is still the file that was hashed: same resolved path,
size, mtime, inode, device and ctime. ctime is there because it cannot be set from user space:
a file rewritten in place with its old mtime put back (cp -p, touch -d) is hashed again.
The cache only saves time: an entry that cannot be read, parsed or written is ignored, and a
read-only or foreign cache directory never stops a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from edgeeval.config.gguf import sha256_file

CACHE_DIR_ENV = "EDGEEVAL_CACHE_DIR"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """edgeeval's directory in the user's cache: $EDGEEVAL_CACHE_DIR, $XDG_CACHE_HOME/edgeeval or ~/.cache/edgeeval."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "edgeeval"


def cached_sha256(path: Path | str, cache: Path | None = None) -> str:
    """The sha256 of a file: remembered from an earlier call while the file is unchanged, else read
    (and remembered). `cache` defaults to `cache_dir()`."""
    path = Path(path)
    try:
        before = _identity(path)
    except OSError:
        before = None
    if before is None:
        return sha256_file(path)  # missing, a directory, a FIFO...: its error message says which
    entries = (cache if cache is not None else cache_dir()) / "sha256"
    entry = entries / (hashlib.sha256(before["path"].encode()).hexdigest() + ".json")
    remembered = _read_entry(entry, before)
    if remembered is not None:
        return remembered
    digest = sha256_file(path)
    try:
        unchanged = _identity(path) == before
    except OSError:
        unchanged = False
    if unchanged:  # a file that changed while it was read: its digest belongs to no version of it
        _write_entry(entries, entry, {"file": before, "sha256": digest})
    return digest


def _identity(path: Path) -> dict | None:
    """What must stay the same for a remembered digest to hold; None for anything but a regular file."""
    real = path.resolve()
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        return None
    return {"path": str(real), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns,
            "inode": info.st_ino, "device": info.st_dev}


def _read_entry(entry: Path, identity: dict) -> str | None:
    if not _private(entry.parent):
        return None
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        digest = data["sha256"]
        if data["file"] == identity and isinstance(digest, str) and _HEX64.fullmatch(digest):
            return digest
    except (OSError, ValueError, TypeError, KeyError):
        pass  # missing, half-written by a crash of an older version, or edited by hand: hash again
    return None


def _write_entry(entries: Path, entry: Path, data: dict) -> None:
    tmp = None
    try:
        entries.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        entries.mkdir(mode=0o700, exist_ok=True)
        if not _private(entries):
            return
        # mkstemp makes the file 0600; replace() makes the new entry appear whole or not at all.
        fd, tmp = tempfile.mkstemp(dir=entries, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, entry)
        tmp = None
    except OSError:
        pass  # read-only or full disk, no home directory: the run goes on without the cache
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _private(directory: Path) -> bool:
    """Whether entries in `directory` can be trusted: a real directory of this user that no one else
    can write to. One of ours that is open to others is made 0700."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return False
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            os.chmod(directory, 0o700)
        except OSError:
            return not stat.S_IMODE(info.st_mode) & 0o022
    return True
