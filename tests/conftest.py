"""Shared fixtures: tiny GGUF files, a project laid out like the repository, the real small models."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """Model hashes remembered during tests go to a temporary cache, never the user's ~/.cache
    (the CLI's subprocesses inherit the variable)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEEVAL_CACHE_DIR", str(tmp_path_factory.mktemp("edgeeval-cache")))
        yield

# Hypothesis profiles. "dev" (the default) explores: every run draws new examples, and the examples
# that failed before are replayed first from .hypothesis/. "ci" is the same on every run and every
# clone (derandomized, no example database), so a CI result depends on the code alone; a failure there
# prints its reproduction blob. Neither has a deadline: the tests that need one time themselves, and on
# a busy 2-core machine a per-example deadline measures the neighbours. Choose with
# HYPOTHESIS_PROFILE=ci (.ci/run sets it) or pytest --hypothesis-profile=ci. A test's own @settings
# (max_examples, health checks) still apply under either profile.
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


LLAMA_THREADS = 1
"""llama.cpp threads for the tests on the real models (CLI runs get --threads). One: these tests check
results, not speed, and on shared cores (a CI runner, two cores with other jobs) llama.cpp's threads
wait for each other at every step: at a load of about 4 on 2 cores, scoring the case challenges took
3 to 4 times longer with two threads than with one. With one thread the CPU time of a test is also
its wall time on a quiet machine, so the suite's time can be read off any run."""


def cpu_seconds() -> float:
    """CPU time of this process and of the child processes it has reaped (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def takes_at_most(cpu_s: float, wall_s: float | None = None):
    """The block must finish within `cpu_s` seconds of CPU and `wall_s` seconds of wall time (default:
    six times the CPU bound, at least 30 s). The CPU bound is the tight one: it measures the work done,
    which a busy machine does not change (two cores shared with other jobs stretch wall time six-fold);
    the wall bound still catches time spent waiting rather than working."""
    wall_s = max(30.0, 6 * cpu_s) if wall_s is None else wall_s
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    yield
    cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
    assert cpu < cpu_s, f"took {cpu:.2f} s of CPU (at most {cpu_s} s)"
    assert wall < wall_s, f"took {wall:.1f} s (at most {wall_s} s; {cpu:.2f} s of CPU)"


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
    for name in ("prompts", "benchmarks/clinical"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
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
    """The bundled demo models, found the way edgeeval finds them, when their packages are installed.

    Finding Gemma the first time assembles it from its chunk packages into ~/.cache, not atomically:
    a lock makes parallel test processes (pytest -n) wait for the one that assembles it."""
    import fcntl
    import tempfile

    from edgeeval.config.model_files import resolve_model_path
    from edgeeval.config.models import load_models_config
    from edgeeval.errors import ModelFileError

    project = load_models_config(ROOT / "models.toml")
    found = {}
    with open(Path(tempfile.gettempdir()) / "edgeeval-tests-models.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


@pytest.fixture(scope="session")
def _empty_config_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("config-home")


@pytest.fixture(autouse=True)
def _no_user_config(_empty_config_home, monkeypatch):
    """The tests choose their models.toml and task folders themselves: the developer's own
    $EDGEEVAL_CONFIG, $EDGEEVAL_TASKS_DIRS or ~/.config/edgeeval/models.toml must not leak in."""
    monkeypatch.delenv("EDGEEVAL_CONFIG", raising=False)
    monkeypatch.delenv("EDGEEVAL_TASKS_DIRS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(_empty_config_home))


@pytest.fixture(scope="session")
def tiny_f32_path(real_models, tmp_path_factory) -> Path:
    """The engine tests' tiny float32 llama (engine_support.write_tiny_f32_llama, about 4 s of CPU), written
    once per session; the tests only load it."""
    from engine_support import write_tiny_f32_llama

    return write_tiny_f32_llama(real_models["smollm2"], tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf")
