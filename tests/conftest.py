"""Shared fixtures: tiny GGUF files, a project laid out like the repository, the real small models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """Model hashes remembered during tests go to a temporary cache, never the user's ~/.cache
    (the CLI's subprocesses inherit the variable)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEEVAL_CACHE_DIR", str(tmp_path_factory.mktemp("edgeeval-cache")))
        yield


def write_tiny_gguf(path: Path, name: str = "tiny", chat_template: str | None = None, arch: str = "llama") -> Path:
    """A small but well-formed GGUF (metadata and one tensor); enough for everything but llama.cpp."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(2048)
    writer.add_file_type(15)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


FAKE_MODELS_TOML = """
[models.general-small]
path = "general.gguf"
source = "test"
family = "general"
chat_template = "prompts/chat/chatml.j2"

[models.bio-small]
path = "bio.gguf"
source = "test"
family = "biomedical"
base = "general-small"
chat_template = "prompts/chat/chatml.j2"

[pairs.test]
baseline = "general-small"
candidate = "bio-small"
"""


def make_project(root: Path, models_toml: str = FAKE_MODELS_TOML) -> Path:
    """root/project with the repository's prompts and tasks and `models_toml`; root/models with two tiny GGUFs."""
    project = root / "project"
    project.mkdir(parents=True)
    for name in ("prompts", "benchmarks"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("speed", "__pycache__"))
    models = root / "models"
    models.mkdir()
    write_tiny_gguf(models / "general.gguf", "general")
    write_tiny_gguf(models / "bio.gguf", "bio")
    (project / "models.toml").write_text(models_toml)
    return project


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A project directory with the repository's prompts and tasks and a models.toml of two tiny GGUFs."""
    return make_project(tmp_path)


def real_model_paths() -> dict[str, Path]:
    """The bundled demo models, found the way edgeeval finds them, when their packages are installed."""
    from edgeeval.config import load_models_config, resolve_model_path
    from edgeeval.errors import ModelFileError

    project = load_models_config(ROOT / "models.toml")
    found = {}
    for key, name in (("gemma", "gemma3-270m"), ("smollm2", "smollm2-135m-instruct")):
        try:
            found[key] = resolve_model_path(project, name)
        except ModelFileError:
            pass
    return found


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    found = real_model_paths()
    missing = None
    if len(found) < 2:
        missing = "the demo model packages are not installed (run scripts/setup.sh)"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        missing = "llama-cpp-python is not installed (run scripts/setup.sh)"
    if missing and os.environ.get("CI"):
        pytest.fail(missing)  # CI installs everything: a skip there would hide a broken set-up
    if missing:
        pytest.skip(missing)
    return found
