"""Reading a TOML file into a frozen pydantic model: the file's errors, and the model's, in one line naming the
file, the key and what was allowed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeeval.errors import ConfigError
from edgeeval.files import reading

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Frozen(BaseModel):
    """A config section: immutable once read, and a key it does not know is an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with reading(path, ConfigError, "file"), path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def explain(path: Path, exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    """One line naming the file, the key and what was allowed, from pydantic's first error."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        owner = model_at(model, err["loc"][:-1])
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return ConfigError(f"{path}: unknown key '{loc}' (allowed here: {allowed})")
    if err["type"] == "missing":
        return ConfigError(f"{path}: missing required key '{loc}'")
    if not loc:  # a rule across keys: the message names them; the input is the whole file
        return ConfigError(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return ConfigError(f"{path}: key '{loc}': {err['msg']} (got {err.get('input')!r})")


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
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


def validated(path: Path, raw: dict[str, Any], model: type[M]) -> M:
    """`raw` (read from `path`) as a `model`; ConfigError names the file, the key and what was allowed."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise explain(path, exc, model) from None
