"""User-facing errors (bad config, bad data, bad model files): the CLI prints them in one line and exits 2."""

from __future__ import annotations


class EdgeevalError(Exception):
    """An error in the user's input or environment, with a message that says what and where."""


class ConfigError(EdgeevalError):
    """models.toml or a task TOML is invalid."""


class DataError(EdgeevalError):
    """A data file is missing, malformed, or has a bad row."""


class ModelFileError(EdgeevalError):
    """A GGUF file is missing, unreadable, not GGUF, or truncated."""


class TemplateError(EdgeevalError):
    """A prompt or chat template failed to render (undefined variable, sandbox violation, syntax)."""
