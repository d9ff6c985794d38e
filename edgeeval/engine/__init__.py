"""The engine boundary: what the runner asks of a model, and what it gets back."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class EngineSettings:
    """How a model is loaded and run; recorded in the manifest so a run can be reproduced."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 0
    """0 means one thread per physical core."""
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
    speculative: str = "none"
    """Prompt-lookup drafting in generation (greedy output either way, up to near-ties): 'none' (default:
    on the shared 2-core machine it did not pay and changed a third of the demo answers, see
    benchmarks/speed/README.md), 'auto' (summary tasks), 'lookup' (every generation task). A draft model,
    where one is given, drafts whatever this says. The runner resolves it per task."""
    draft_model: str | None = None
    """A GGUF with the same vocabulary that drafts tokens for this model (draft-model speculative decoding)."""
    n_draft: int = 8
    """Most tokens drafted per step: verifying 8 costs little more than generating one where decoding is
    bound by memory bandwidth (models of a billion parameters and more on a CPU)."""
    backend: str = "llama"
    """'llama' (llama.cpp) or 'fake' (the deterministic stand-in used by tests; no model is read)."""
    fake_delay_s: float = 0.0
    """With the fake backend: seconds per answer, so tests can interrupt a run mid-way."""

    def resolved(self) -> "EngineSettings":
        values = asdict(self)
        if self.n_threads <= 0:
            values["n_threads"] = physical_cores()
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

    def generate(self, prompt: str, max_tokens: int, stop: list[str], speculative: str | None = None) -> Generation:
        """Greedy answer; `speculative` ('lookup', 'draft', None) only changes how fast it comes."""
        ...

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str], n_parallel: int | None = None,
                      speculative: str | None = None) -> list[Generation]:
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


def physical_cores() -> int:
    """Physical cores (llama.cpp is slower with hyper-threads); falls back to the logical count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return os.cpu_count() or 1
    cores = set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and core is not None:
            cores.add((physical, core))
            physical = core = None
    if core is not None:
        cores.add((physical, core))
    return len(cores) or os.cpu_count() or 1


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return " amx_" in handle.read()
    except OSError:
        return False
