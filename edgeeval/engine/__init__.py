"""The engine boundary: what the runner asks of a model, and what it gets back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict

from edgeeval.engine.machine import cpu_has_amx, default_threads
from edgeeval.types import ErrorKind, Failure, FinishReason

Speculative = Literal["none", "auto", "lookup"]
"""How generation drafts tokens, as a run asks (--speculative): not at all, for summary tasks, for every task."""
DraftMethod = Literal["lookup", "draft"]
"""How one generate call drafts: prompt lookup or the draft model (None: no drafting)."""
Backend = Literal["llama", "fake"]
"""llama.cpp, or the deterministic stand-in the tests use."""


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
    share_prefixes: bool = True
    """Batched generation decodes a prefix that prompts share once and starts each of them from a copy of it
    (engine/sharing.py); False decodes every prompt whole (the speed benchmark's "before")."""
    unit_timeout_s: float = 3600.0
    """A single generation taking longer than this is stopped and recorded as an error."""
    speculative: Speculative = "none"
    """Prompt-lookup drafting in generation (greedy output either way, up to near-ties): 'none' (default:
    on the shared 2-core machine it did not pay and changed a third of the demo answers, see
    benchmarks/speed/README.md), 'auto' (summary tasks), 'lookup' (every generation task). A draft model,
    where one is given, drafts whatever this says. The runner resolves it per task."""
    draft_model: str | None = None
    """A GGUF with the same vocabulary that drafts tokens for this model (draft-model speculative decoding)."""
    n_draft: int = 8
    """Most tokens drafted per step: verifying 8 costs little more than generating one where decoding is
    bound by memory bandwidth (models of a billion parameters and more on a CPU)."""
    embeddings_only: bool = False
    """Load the model for its embeddings only (an encoder such as BERTScore's): no generation context, which
    an encoder-only model cannot have."""
    vocab_only: bool = False
    """Load only the model's vocabulary (no weights, no context, seconds to load): the planner's tokenizer for the
    context rules that count the model's own tokens."""
    backend: Backend = "llama"
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
    """One answer, or the reason there is none (`failure`)."""

    text: str | None
    n_prompt_tokens: int | None = None
    n_output_tokens: int | None = None
    finish_reason: FinishReason | None = None
    seconds: float = 0.0
    failure: Failure | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.finish_reason not in (None, *get_args(FinishReason)):
            raise ValueError(f"finish_reason {self.finish_reason!r} is not one of {get_args(FinishReason)}")

    @classmethod
    def failed(cls, kind: ErrorKind, detail: str, **fields: Any) -> "Generation":
        """No answer, because of `kind`; `fields` are the counts known so far (n_prompt_tokens, seconds)."""
        return cls(text=None, finish_reason="error", failure=Failure(kind, detail), **fields)

    def to_wire(self) -> dict[str, Any]:
        """Plain data (lists, strings, numbers) for the worker's reply."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "Generation":
        failure = data.get("failure")
        return cls(**{**data, "failure": None if failure is None else Failure(**failure)})


class EngineError(Exception):
    """A unit of work the engine could not do (prompt too long, bad input, native crash): its kind
    and what happened; the message is 'kind: detail', as records show it."""

    def __init__(self, kind: ErrorKind, detail: str):
        super().__init__(kind, detail)
        self.kind = ErrorKind(kind)
        self.detail = detail

    @property
    def failure(self) -> Failure:
        return Failure(self.kind, self.detail)

    def __str__(self) -> str:
        return self.kind.message(self.detail)


class OptionScore(BaseModel):
    """The score of one continuation (answer option) given a context, or why it has none (`failure`,
    then every number is None). Built by `scored`, `single_token` or `failed`; crosses the worker
    boundary as `to_wire`/`from_wire`, and goes into a record as `record_entry`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    logprob: float | None = None
    """Sum of the continuation tokens' log-probabilities (natural log)."""
    mean_logprob: float | None = None
    """That sum divided by `n_tokens` (the length-normalised score)."""
    n_tokens: int | None = None
    """Continuation tokens scored."""
    n_context_tokens: int | None = None
    """Tokens before the first scored one (None from the letter fast path)."""
    token_logprobs: tuple[float, ...] | None = None
    """The log-probability of each continuation token, so other normalisations (e.g. leaving out tokens
    every option shares) can be computed later without the model."""
    greedy: tuple[bool, ...] | None = None
    """Per continuation token, whether it was the argmax at its position (None when not computed)."""
    is_greedy: bool | None = None
    """All of them were: the continuation is what greedy decoding would produce."""
    failure: Failure | None = None

    @classmethod
    def scored(cls, token_logprobs: Sequence[float], greedy: Sequence[bool], n_context_tokens: int) -> "OptionScore":
        """A continuation scored token by token (at least one token)."""
        total = float(sum(token_logprobs))
        return cls(logprob=total, mean_logprob=total / len(token_logprobs), n_tokens=len(token_logprobs),
                   n_context_tokens=n_context_tokens, token_logprobs=tuple(token_logprobs), greedy=tuple(greedy),
                   is_greedy=all(greedy))

    @classmethod
    def single_token(cls, logprob: float) -> "OptionScore":
        """A one-token continuation scored from the next-token distribution (the letter fast path,
        which does not look at the argmax)."""
        return cls(logprob=logprob, mean_logprob=logprob, n_tokens=1, token_logprobs=(logprob,))

    @classmethod
    def failed(cls, kind: ErrorKind, detail: str) -> "OptionScore":
        """An option that could not be scored: every number None."""
        return cls(failure=Failure(kind, detail))

    def record_entry(self) -> dict[str, Any]:
        """This option's entry in a loglik record's `scores` table (what parsing.best_option reads)."""
        return {"logprob": self.logprob, "mean_logprob": self.mean_logprob, "n_tokens": self.n_tokens,
                "token_logprobs": None if self.token_logprobs is None else list(self.token_logprobs),
                "is_greedy": self.is_greedy}

    def to_wire(self) -> dict[str, Any]:
        """Plain data (lists, strings, numbers) for the worker's reply."""
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "OptionScore":
        return cls.model_validate(data)


class Engine(Protocol):
    """A loaded model. Implementations: the llama.cpp worker and the fake used by fast tests."""

    def info(self) -> dict[str, Any]: ...

    def generate(self, prompt: str, max_tokens: int, stop: list[str],
                 speculative: DraftMethod | None = None) -> Generation:
        """Greedy answer; `speculative` ('lookup', 'draft', None) only changes how fast it comes."""
        ...

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str], n_parallel: int | None = None,
                      speculative: DraftMethod | None = None) -> list[Generation]:
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

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text (retrieval's 'embedding' retriever). Raises EngineError."""
        ...

    def token_embeddings(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text: {tokens, special (the start and end tokens the model adds), vectors (each token's vector of
        the last layer)}: what BERTScore matches. Raises EngineError."""
        ...

    def calibrate(self, n_prompt: int, n_gen: int) -> dict[str, float]:
        """{prompt_tokens_per_s, gen_tokens_per_s, chars_per_token, ...} as the model is loaded (--repack auto)."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """How many tokens each text is to this model, its start token included where it adds one (as the study's
        `tokenizer.encode` counted them)."""
        ...

    def token_slice(self, text: str, start: int | None, end: int | None) -> str:
        """The text of tokens [start:end] of `text`, tokenized as `count_tokens` does (Python's slice rules)."""
        ...

    def close(self) -> None: ...
