"""The installed tool, as a hospital gets it: edgeeval's wheel built from this tree and installed (not
editable) with every dependency from a wheelhouse into a fresh venv with no network, then run from a
folder outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeeval.run.planning import TASKS_DIR
from edgeeval.run.store import read_records

from conftest import ROOT

pytestmark = pytest.mark.packaging

SOURCES = ("pyproject.toml", "README.md", "edgeeval", "models.toml", "prompts", "benchmarks/clinical")
"""What the wheel is built from (as scripts/wheelhouse.sh copies it): the package and the project files at the
repository's root that the wheel carries as edgeeval/builtin/."""
SHIPPED = ("models.toml", "prompts", "benchmarks/clinical")
PINS = dict(re.findall(r'^(\w+)="([^"]*)"', (ROOT / "scripts" / "pins.sh").read_text(), re.M))
BUILTIN_TASKS = sorted(p.stem for p in (ROOT / TASKS_DIR).glob("*.toml"))


def no_network() -> list[str]:
    """`unshare -n` (a network namespace with no interface) where it is allowed, as root in CI."""
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ["unshare", "-n"] if ok else []


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a machine with nothing configured: no pip index or links, no edgeeval settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "EDGEEVAL_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "XDG_CONFIG_HOME": str(home / "config")}


def run(args: list, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    path = Path(os.environ.get("EDGEEVAL_WHEELHOUSE") or ROOT / "dist" / "wheelhouse")
    if not list(path.glob("llama_cpp_python-*.whl")) or not list(path.glob("hatchling-*.whl")):
        message = f"no wheelhouse at {path}: run `make wheelhouse` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI builds it: a skip there would hide a broken packaging
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def installed(wheelhouse, tmp_path_factory) -> dict:
    """A fresh venv holding edgeeval's wheel, built from this tree, and the demo models, installed with
    the README's commands from a copy of the wheelhouse (this tree's wheel in place of its own)."""
    tmp = tmp_path_factory.mktemp("installed")
    env = clean_env(tmp)
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    house = tmp / "wheelhouse"
    house.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("edgeeval-"):
            (house / wheel.name).symlink_to(wheel.resolve())
    offline = no_network()
    # Building needs hatchling, which pip takes from the wheelhouse: no index, no network.
    run([*offline, sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--find-links", house,
         "-w", house, src], tmp, env)
    venv = tmp / "venv"
    run([*offline, sys.executable, "-m", "venv", venv], tmp, env)
    pip = [*offline, venv / "bin" / "pip", "install", "-q", "--no-index", "--find-links", house]
    run([*pip, "edgeeval", PINS["DEMO_MODEL"]], tmp, env)
    run([*pip, "--no-deps", PINS["DEMO_MODEL_NO_DEPS"]], tmp, env)
    scratch = tmp / "scratch"  # a folder with nothing of the repository's in it
    scratch.mkdir()
    return {"venv": venv, "wheel": next(house.glob("edgeeval-*.whl")), "scratch": scratch, "env": env,
            "offline": offline}


def edgeeval(installed: dict, *args, offline: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    prefix = installed["offline"] if offline else []
    return run([*prefix, installed["venv"] / "bin" / "edgeeval", *args], installed["scratch"], installed["env"], timeout)


def tree_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_the_wheel_holds_every_built_in_file(installed):
    """The root's models.toml, prompts/ and benchmarks/clinical/ as edgeeval/builtin/, the starter project as
    package data; nothing else of the repository (tests, the speed benchmarks)."""
    shipped = set(zipfile.ZipFile(installed["wheel"]).namelist())
    in_tree = {f"edgeeval/builtin/{p.relative_to(ROOT)}" for name in SHIPPED for p in tree_files(ROOT / name)}
    starter = {str(p.relative_to(ROOT)) for p in tree_files(ROOT / "edgeeval" / "starter")}
    assert len(in_tree) > 100 and starter and in_tree | starter <= shipped
    assert not any(name.startswith(("tests/", "benchmarks/", "prompts/", "edgeeval/builtin/benchmarks/speed"))
                   for name in shipped)


def test_installed_edgeeval_lists_every_built_in_task_from_any_folder(installed):
    where = run([installed["venv"] / "bin" / "python", "-c", "import edgeeval; print(edgeeval.__file__)"],
                installed["scratch"], installed["env"]).stdout.strip()
    assert Path(where).is_relative_to(installed["venv"]), where  # the installed copy, not this checkout
    out = edgeeval(installed, "tasks").stdout
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert names == BUILTIN_TASKS
    assert out.count("from: built-in") == len(BUILTIN_TASKS)


def test_installed_edgeeval_names_the_packaged_config(installed):
    first = edgeeval(installed, "models").stdout.splitlines()[0]
    site = next((installed["venv"] / "lib").glob("python3*/site-packages"))
    assert first == f"config: {site / 'edgeeval' / 'builtin' / 'models.toml'} (from the packaged default)"


@pytest.mark.real_model
def test_installed_demo_runs_with_no_network(installed):
    """The compiled llama.cpp from the wheelhouse, the packaged demo config and tasks, the demo models'
    packages: two questions each, offline, from the scratch folder."""
    out = installed["scratch"] / "demo"
    result = edgeeval(installed, "demo", "--out", out, "--limit", "2", "--max-tokens", "8", "--quiet",
                      "--threads", "1", offline=True, timeout=600)
    assert f"report: {out / 'report.md'}" in result.stdout
    for model in ("gemma3-270m", "smollm2-135m-instruct"):
        records = read_records(out / "records" / model / "case_challenges.jsonl")
        assert len(records) == 2 and all(r.error is None for r in records)
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| demo |"))
    assert re.search(r"\| \w+(-dirty)? \(ggml [\d.]+\), CPU \w+", row), row
