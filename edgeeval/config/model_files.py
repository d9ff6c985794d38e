"""A model entry's GGUF file: found (a path under the models directory, or a file a Python package ships), read
with edgeeval's own GGUF reader, hashed (the hash cached) and checked against models.toml's sha256."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from edgeeval.config.gguf import read_gguf_metadata
from edgeeval.config.gguf_format import GGUFInfo
from edgeeval.config.models import MODELS_DIR_ENV, ModelSpec, Project
from edgeeval.config.sha256_cache import cached_sha256
from edgeeval.errors import ConfigError, ModelFileError


def checked_model_file(project: Project, name: str) -> tuple[Path, GGUFInfo, str]:
    """Model `name`'s GGUF as `read_model_file` finds it, its sha256 checked against the entry's when it has one."""
    path, info, sha = read_model_file(project, name)
    if not sha256_matches(project.config.models[name], sha):
        raise ConfigError(f"model '{name}': {path} has sha256 {sha}, but models.toml expects "
                          f"{project.config.models[name].sha256}")
    return path, info, sha


def read_model_file(project: Project, name: str) -> tuple[Path, GGUFInfo, str]:
    """Model `name`'s GGUF: found, read with edgeeval's own reader (a file that is not a GGUF is refused,
    naming it) and hashed (the hash cached)."""
    path = resolve_model_path(project, name)
    return path, read_gguf_metadata(path), cached_sha256(path)


def sha256_matches(spec: ModelSpec, sha: str) -> bool:
    """Whether a file of this sha256 is the entry's (an entry without one accepts any file)."""
    return spec.sha256 is None or spec.sha256.lower() == sha


def resolve_model_path(project: Project, name: str) -> Path:
    """The GGUF file of model `name`, which must exist; the error says where it was looked for."""
    spec = project.config.models[name]
    if spec.package is not None:
        return _package_model_path(name, spec)
    assert spec.path is not None  # load_project: exactly one of path and package
    candidate = Path(spec.path).expanduser()
    if not candidate.is_absolute():
        candidate = project.models_dir / candidate
    if not candidate.is_file():
        where = f"looked in the models directory {project.models_dir} (set --models-dir or {MODELS_DIR_ENV})"
        if Path(spec.path).expanduser().is_absolute():
            where = "the path in models.toml is absolute"
        hint = f"; get it from {spec.source}" if spec.source else ""
        raise ModelFileError(f"model '{name}': file not found: {candidate} ({where}{hint})")
    return candidate


def _package_model_path(name: str, spec: ModelSpec) -> Path:
    """A GGUF shipped inside a Python package: package data found without importing the package
    (some such packages import heavy plugins), or a file the package assembles into a cache."""
    assert spec.package is not None and spec.file is not None  # load_project checks both are set
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelFileError(
            f"model '{name}': package '{spec.package}' is not installed (run scripts/setup.sh, or pip install it)"
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / spec.file
        if candidate.is_file():
            return candidate
    module = importlib.import_module(spec.package)
    if hasattr(module, "assemble"):
        # The package writes the file into the user's cache once and verifies its sha256.
        return Path(module.assemble())
    raise ModelFileError(f"model '{name}': package '{spec.package}' has no file {spec.file}")
