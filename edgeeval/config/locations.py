"""Where edgeeval finds its files: the user's models.toml, the built-in tasks (the repository's root, or inside
an installed wheel), and the user's own task folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Sequence

from edgeeval.errors import ConfigError

TASKS_SUBDIR = Path("benchmarks/clinical")
"""Where a folder laid out like the repository (the repository itself, a project made by `edgeeval init`)
keeps its task TOMLs; their relative paths resolve against the folder above benchmarks/."""
CONFIG_NAME = "models.toml"


def _package_dir() -> Path:
    # A wheel installed by pip (and a checkout) is a folder on disk; prompts and data files are read as
    # paths (kept inside their root, see prompting's inside_root), so a zipped install is not supported.
    package = files("edgeeval")
    if not isinstance(package, Path):  # pragma: no cover - zipimport
        raise ImportError(f"edgeeval's built-in files must be on disk, not in {package}; install edgeeval with pip")
    return package


PACKAGE_DIR = _package_dir()


def _builtin_root() -> Path:
    """The folder holding the study's models.toml, prompts/ and benchmarks/clinical/: inside the package
    (edgeeval/builtin/) in an installed wheel, which carries them there (pyproject.toml, force-include);
    the repository's root in a checkout or an editable install, where they are kept."""
    shipped, checkout = PACKAGE_DIR / "builtin", PACKAGE_DIR.parent
    for root in (shipped, checkout):
        if (root / CONFIG_NAME).is_file() and (root / TASKS_SUBDIR).is_dir():
            return root
    raise ImportError(f"edgeeval's built-in tasks are missing: neither {shipped} nor {checkout} holds "
                      f"{CONFIG_NAME} and {TASKS_SUBDIR}/; reinstall edgeeval")


BUILTIN_ROOT = _builtin_root()
"""The built-in tasks (benchmarks/clinical/), their prompts and samples, the chat templates (prompts/chat/)
and the study's models.toml: the repository's root in a checkout, edgeeval/builtin/ in an installed wheel."""
BUILTIN_CONFIG = BUILTIN_ROOT / CONFIG_NAME
PUBLISHED_DIR = BUILTIN_ROOT / TASKS_SUBDIR / "reference"
"""The published study's scores (CSV, in percent), which reports set beside a run's own."""
STARTER_ROOT = PACKAGE_DIR / "starter"
"""What `edgeeval init DIR` copies: a models.toml and one example task, laid out like BUILTIN_ROOT."""
CONFIG_ENV = "EDGEEVAL_CONFIG"
TASKS_DIRS_ENV = "EDGEEVAL_TASKS_DIRS"


# --- models.toml ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigChoice:
    """The models.toml a command reads, and what chose it (shown by `edgeeval models`)."""

    path: Path
    chosen_by: str


def user_config_dir() -> Path:
    """The user's edgeeval config folder: $XDG_CONFIG_HOME/edgeeval (default ~/.config/edgeeval);
    %APPDATA%\\edgeeval on Windows."""
    if os.name == "nt":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "edgeeval"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"  # the XDG spec ignores a relative one
    return base / "edgeeval"


def find_config(explicit: str | None) -> ConfigChoice:
    """The first of: --config PATH, $EDGEEVAL_CONFIG, ./models.toml, the user config folder's
    models.toml, the study's models.toml shipped in the package. A file named on purpose (the first
    two) must exist; the others are taken when they do."""
    for value, chosen_by in ((explicit, "--config"), (os.environ.get(CONFIG_ENV), f"${CONFIG_ENV}")):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: file not found (named by {chosen_by})")
            return ConfigChoice(path, chosen_by)
    for path, chosen_by in ((Path(CONFIG_NAME), "./models.toml"),
                            (user_config_dir() / CONFIG_NAME, "the user config folder")):
        if path.is_file():
            return ConfigChoice(path, chosen_by)
    return ConfigChoice(BUILTIN_CONFIG, "the packaged default")


# --- task folders ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskFolder:
    """A folder of task TOMLs, and the root their relative paths (prompt, data, few-shot) resolve against
    and their prompts must stay inside."""

    tasks: Path
    root: Path
    origin: str
    """What `edgeeval tasks` says the tasks came from: 'built-in' or the folder."""


@dataclass(frozen=True)
class TaskFile:
    name: str
    path: Path
    folder: TaskFolder


def builtin_tasks() -> TaskFolder:
    return TaskFolder(BUILTIN_ROOT / TASKS_SUBDIR, BUILTIN_ROOT, "built-in")


def user_task_folder(directory: Path) -> TaskFolder:
    """A --tasks-dir: laid out like the repository (DIR/benchmarks/clinical/*.toml, DIR/prompts/...) or a
    plain folder of task TOMLs; either way a task's relative paths resolve against DIR."""
    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise ConfigError(f"tasks folder {directory}: not a folder (from --tasks-dir or ${TASKS_DIRS_ENV})")
    nested = directory / TASKS_SUBDIR
    tasks = nested if nested.is_dir() else directory
    if not _task_tomls(tasks):
        raise ConfigError(f"tasks folder {directory}: no task TOML in it (looked for {tasks}/*.toml)")
    return TaskFolder(tasks, directory, str(directory))


def env_tasks_dirs() -> list[Path]:
    """$EDGEEVAL_TASKS_DIRS: folders separated by os.pathsep (':' on Linux and macOS, ';' on Windows)."""
    return [Path(part) for part in os.environ.get(TASKS_DIRS_ENV, "").split(os.pathsep) if part.strip()]


def task_folders(config_dir: Path, tasks_dirs: Sequence[Path]) -> list[TaskFolder]:
    """Where tasks come from, in order; a later folder's task replaces an earlier one of the same name:
    the built-in tasks; the config's folder when it is laid out like the repository (it has
    benchmarks/clinical/); then each user tasks folder in the order given."""
    folders = [builtin_tasks()]
    config_dir = config_dir.resolve()
    if (config_dir / TASKS_SUBDIR).is_dir() and config_dir != BUILTIN_ROOT.resolve():
        folders.append(TaskFolder(config_dir / TASKS_SUBDIR, config_dir, str(config_dir)))
    folders += [user_task_folder(directory) for directory in tasks_dirs]
    return folders


def find_tasks(folders: Sequence[TaskFolder]) -> dict[str, TaskFile]:
    """Every task by name (the TOML's file stem), the last folder holding a name winning."""
    found: dict[str, TaskFile] = {}
    for folder in folders:
        for path in _task_tomls(folder.tasks):
            found[path.stem] = TaskFile(path.stem, path, folder)
    return dict(sorted(found.items()))


def _task_tomls(folder: Path) -> list[Path]:
    # A plain tasks folder may hold the user's models.toml beside the tasks; it is not a task.
    return sorted(p for p in folder.glob("*.toml") if p.name != CONFIG_NAME and p.is_file())
