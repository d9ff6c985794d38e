"""User-facing errors (bad config, bad data, bad model files: the CLI prints them in one line and exits 2),
and the kinds of failure a unit of work is recorded with."""

from __future__ import annotations

from enum import Enum


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


class ErrorKind(str, Enum):
    """Why a unit of work has no answer, carried as data next to the message ('kind: detail'), so
    that nothing parses the message for it. The values are the message prefixes records have always had."""

    PROMPT_TOO_LONG = "prompt_too_long"
    """The prompt (with an option, in loglik mode) does not fit the context window, even cut."""
    EMPTY_PROMPT = "empty_prompt"
    EMPTY_CONTEXT = "empty_context"
    """Loglik: no tokens before the first scored one."""
    EMPTY_CONTINUATION = "empty_continuation"
    NO_OPTIONS = "no_options"
    TOO_MANY_OPTIONS = "too_many_options"
    """More options than the engine has sequences (n_seq_max - 1)."""
    NOT_SINGLE_TOKEN = "not_single_token"
    """Letter scoring: a letter is not one token after the prompt (the runner then scores full text)."""
    NATIVE_CRASH = "native crash"
    """The worker process died, twice (the second time on a fresh worker)."""
    TIMEOUT = "timeout"
    """The worker took longer than unit_timeout_s, twice."""
    ENGINE = "engine"
    """Any other exception inside the engine."""
    OTHER = "error"
    """Only for records written before kinds were stored, whose message starts with no known kind."""

    def message(self, detail: str) -> str:
        """The text records and reports show: 'kind: detail'."""
        return f"{self.value}: {detail}"

    @classmethod
    def of_message(cls, message: str) -> "ErrorKind":
        """The kind an error message starts with; for records written before the kind was stored."""
        prefix = message.split(":", 1)[0].strip()
        try:
            return cls(prefix)
        except ValueError:
            return cls.OTHER
