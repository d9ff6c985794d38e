"""The engine boundary: what the runner asks of a model, and what it gets back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

from edgeeval.machine import cpu_has_amx, default_threads


@dataclass(frozen=True)
class EngineSettings:
    """How a model is loaded and run; recorded in the manifest so a run can be reproduced."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 0
    """0 means one thread per physical core this process may use (affinity and cgroup quota)."""
    seed: int = 0
    flash_attn: bool = False
    """Off by default: llama.cpp's CPU flash attention gives results that change with how tokens are
    split into batches (by up to 0.3 nats per token on the demo models), so batched and one-at-a-time
    scores would disagree; without it they agree to float rounding."""
    n_seq_max: int = 32
    """Sequences one context holds: the answer options scored together and the prompts of
    generate_many; one of them keeps the shared prefix (system + few-shot) between calls."""
    n_gpu_layers: int = -1
    """-1 offloads every layer when llama.cpp was built with a GPU backend."""
    use_extra_bufts: bool | None = None
    """Weight repacking; None decides per CPU (off on Intel AMX, where it crashes llama_decode)."""
    unit_timeout_s: float = 3600.0
    """A single generation taking longer than this is stopped and recorded as an error."""
    backend: str = "llama"
    """'llama' (llama.cpp) or 'fake' (the deterministic stand-in used by tests; no model is read)."""
    fake_delay_s: float = 0.0
    """With the fake backend: seconds per answer, so tests can interrupt a run mid-way."""

    def resolved(self) -> "EngineSettings":
        values = asdict(self)
        if self.n_threads <= 0:
            values["n_threads"] = default_threads()
        if self.use_extra_bufts is None:
            values["use_extra_bufts"] = not cpu_has_amx()
        return EngineSettings(**values)


@dataclass(frozen=True)
class Generation:
    """One answer, or the reason there is none (`error`)."""

    text: str | None
    n_prompt_tokens: int | None = None
    n_output_tokens: int | None = None
    finish_reason: str | None = None
    """'stop' (end of turn or a stop string), 'length' (max_tokens), 'context' (window full), or 'error'."""
    seconds: float = 0.0
    error: str | None = None
    notes: dict = field(default_factory=dict)


class EngineError(Exception):
    """A unit of work the engine could not do (prompt too long, bad input, native crash); the
    message starts with a short kind ('prompt_too_long: ...') so records can be grouped by it."""


OptionScore = dict
"""The score of one continuation (answer option) given a context, as a plain dict (it crosses
the worker boundary and goes into records as it is):

- ``logprob``: sum of the continuation tokens' log-probabilities (natural log)
- ``mean_logprob``: that sum divided by ``n_tokens`` (the length-normalised score)
- ``n_tokens``: continuation tokens scored
- ``n_context_tokens``: tokens before the first scored one
- ``token_logprobs``: the log-probability of each continuation token (so other normalisations,
  e.g. leaving out tokens every option shares, can be computed later without the model)
- ``greedy``: per continuation token, whether it was the argmax at its position
- ``is_greedy``: all of them were (the continuation is what greedy decoding would produce)
- ``error``: None, or why this option has no score (then the numbers are None)
"""


def error_score(error: str) -> OptionScore:
    """The score of an option that could not be scored: every number None, `error` says why."""
    return {"logprob": None, "mean_logprob": None, "n_tokens": None, "n_context_tokens": None,
            "token_logprobs": None, "greedy": None, "is_greedy": None, "error": error}


class Engine(Protocol):
    """A loaded model. Implementations: the llama.cpp worker and the fake used by fast tests."""

    def info(self) -> dict: ...

    def generate(self, prompt: str, max_tokens: int, stop: list[str]) -> Generation: ...

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str]) -> list[Generation]:
        """Greedy answers to several prompts, decoded together (continuous batching)."""
        ...

    def loglikelihood(self, context: str, continuations: list[str]) -> list[OptionScore]:
        """How likely each continuation is after the context (multiple choice, full option text)."""
        ...

    def loglikelihood_many(self, items: list[tuple[str, list[str]]]) -> list[list[OptionScore]]:
        """`loglikelihood` for several (context, continuations) items, packed together."""
        ...

    def letter_logprobs(self, prompt: str, letters: list[str]) -> dict[str, float]:
        """Log-probability of each single-token letter as the next token after the prompt.
        Raises EngineError when it cannot answer."""
        ...

    def close(self) -> None: ...
