"""The values several stages share: why an answer ended, why a unit of work has none, and that failure as one
value. Nothing here imports edgeeval, so every stage may import it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

FinishReason = Literal["stop", "length", "context", "error"]
"""Why an answer ended: 'stop' (end of turn or a stop string), 'length' (max_tokens), 'context' (window
full), or 'error' (there is no answer)."""


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


@dataclass(frozen=True)
class Failure:
    """Why a unit of work has no answer: its kind, as data, and what happened, for people. Records keep it as
    two fields, `error` (the message, 'kind: detail') and `error_kind`."""

    kind: ErrorKind
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ErrorKind(self.kind))

    @property
    def message(self) -> str:
        """The text records and reports show: 'kind: detail'."""
        return self.kind.message(self.detail)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of_message(cls, message: str, kind: ErrorKind | None = None) -> Failure:
        """The failure a record's message (and kind, when it has one) describes."""
        kind = ErrorKind.of_message(message) if kind is None else ErrorKind(kind)
        prefix = f"{kind.value}:"
        detail = message[len(prefix):].strip() if message.startswith(prefix) else message
        return cls(kind, detail)
