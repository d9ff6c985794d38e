"""Configuration: models.toml and task TOMLs read into frozen, validated pydantic models."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeeval.errors import ConfigError, ModelFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODELS_DIR_ENV = "EDGEEVAL_MODELS_DIR"
DEFAULT_MODELS_DIR = "~/models"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(Frozen):
    """One GGUF model: where its file is, where a person gets it, and how to format its prompts."""

    path: str | None = None
    """The GGUF file: absolute, '~/...', or relative to the models directory. Exclusive with `package`."""
    package: str | None = None
    """A Python package that ships the GGUF (the bundled demo models). Exclusive with `path`."""
    file: str | None = None
    """With `package`: the GGUF's file name inside the package (or the file its `assemble()` writes)."""
    source: str = ""
    """Where a person gets the file (a public repository name); edgeeval never downloads it."""
    family: Literal["general", "biomedical"]
    """'general' or 'biomedical' (the study's two arms)."""
    base: str | None = None
    """For a fine-tune: the name of the model it was trained from."""
    chat_template: str = "gguf"
    """'gguf' (the file's own tokenizer.chat_template), 'none' (plain completion, for base models),
    or a template path such as 'prompts/chat/llama3.j2' for files that carry none."""
    sha256: str | None = None
    """Expected sha256 of the file; checked by `edgeeval models --verify` and before a run."""
    n_ctx: int = Field(default=4096, ge=256, le=1_048_576)
    """Context window to allocate, in tokens."""
    description: str = ""

    @field_validator("chat_template")
    @classmethod
    def _template_kind(cls, value: str) -> str:
        if value in ("gguf", "none") or value.endswith(".j2") or value.endswith(".jinja"):
            return value
        raise ValueError("must be 'gguf', 'none' or a template path ending in .j2")


class Pair(Frozen):
    """A general model and its biomedical fine-tune, compared on the same examples."""

    baseline: str
    """The general model (the reference arm)."""
    candidate: str
    """The biomedical fine-tune being judged against the baseline."""
    description: str = ""


class ModelsConfig(Frozen):
    """The whole models.toml."""

    models: dict[str, ModelSpec]
    pairs: dict[str, Pair] = {}


class DataSpec(Frozen):
    """Where a task's examples come from."""

    path: str
    """The bundled sample, relative to the project root; `--data TASK=PATH` points at the real file."""
    format: Literal["multiple_choice"] = "multiple_choice"
    """Which loader reads it."""


class TaskSpec(Frozen):
    """One clinical task: its data, prompt, generation settings and metrics."""

    name: str
    description: str = ""
    kind: Literal["multiple_choice"]
    """How outputs are parsed and scored."""
    prompt: str
    """The Jinja template for the user message, relative to the project root."""
    system: str = ""
    """System text placed before the user message (folded into the user turn for templates without a system role)."""
    max_tokens: int = Field(default=256, ge=1, le=32768)
    """Maximum new tokens per answer."""
    stop: list[str] = []
    """Stop strings ending an answer (the model's end-of-turn token always stops)."""
    metrics: list[Literal["accuracy", "invalid_rate", "error_rate"]] = ["accuracy", "invalid_rate"]
    data: DataSpec


class Project(Frozen):
    """Everything a command needs: the parsed config and the directories it resolves against."""

    config_path: Path
    root: Path
    models_dir: Path
    config: ModelsConfig


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _explain(path: Path, exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    """One line naming the file, the key and what was allowed, from pydantic's first error."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, err["loc"][:-1])
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return ConfigError(f"{path}: unknown key '{loc}' (allowed here: {allowed})")
    if err["type"] == "missing":
        return ConfigError(f"{path}: missing required key '{loc}'")
    return ConfigError(f"{path}: key '{loc}': {err['msg']} (got {err.get('input')!r})")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at `loc` (dict keys in loc are skipped)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            continue
        annotation = current.model_fields[part].annotation
        args = getattr(annotation, "__args__", ())
        nested = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[-1] if nested else None
    return current


def load_models_config(path: Path, models_dir: str | None = None) -> Project:
    """Read models.toml; check that every pair names known models."""
    path = path.expanduser().resolve()
    raw = _read_toml(path)
    try:
        config = ModelsConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc, ModelsConfig) from None
    for name, spec in config.models.items():
        if (spec.path is None) == (spec.package is None):
            raise ConfigError(f"{path}: model '{name}' needs exactly one of 'path' or 'package'")
        if spec.package is not None and spec.file is None:
            raise ConfigError(f"{path}: model '{name}' names a package but no 'file'")
        if spec.base is not None and spec.base not in config.models:
            raise ConfigError(f"{path}: model '{name}' has base '{spec.base}', which is not a model in this file")
    for name, pair in config.pairs.items():
        for role in ("baseline", "candidate"):
            target = getattr(pair, role)
            if target not in config.models:
                known = ", ".join(config.models)
                raise ConfigError(f"{path}: pair '{name}' {role} '{target}' is not a model in this file (models: {known})")
    chosen = models_dir or os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR
    return Project(config_path=path, root=path.parent, models_dir=Path(chosen).expanduser(), config=config)


def load_task(path: Path) -> TaskSpec:
    """Read one task TOML; the task's name defaults to the file's stem."""
    raw = _read_toml(path)
    raw.setdefault("name", path.stem)
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc, TaskSpec) from None


def task_hash(spec: TaskSpec, template_text: str, data_sha256: str) -> str:
    """Changes whenever the task definition, its prompt template or its data file changes."""
    payload = spec.model_dump_json() + "\0" + template_text + "\0" + data_sha256
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def resolve_model_path(project: Project, name: str) -> Path:
    """The GGUF file of model `name`, which must exist; the error says where it was looked for."""
    spec = project.config.models[name]
    if spec.package is not None:
        return _package_model_path(name, spec)
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
