"""Where edgeeval finds its files: the built-in tasks and config shipped inside the package."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _builtin_root() -> Path:
    # A wheel installed by pip (and a checkout) is a folder on disk; prompts and data files are read as
    # paths (kept inside their root, see chat.inside_root), so a zipped install is not supported.
    root = files("edgeeval") / "builtin"
    if not isinstance(root, Path):  # pragma: no cover - zipimport
        raise ImportError(f"edgeeval's built-in files must be on disk, not in {root}; install edgeeval with pip")
    return root


BUILTIN_ROOT = _builtin_root()
"""The built-in tasks (benchmarks/clinical/), their prompts and samples, the chat templates
(prompts/chat/) and the study's models.toml: edgeeval/builtin/ in a checkout and in a wheel alike."""
BUILTIN_CONFIG = BUILTIN_ROOT / "models.toml"
