"""Fitting a prompt by the model's own tokens, as the study did: CLUE fills a LongHealth prompt with documents up to a
cap counted by the model's tokenizer (the answer's documents first, the last one cut by tokens), and its TGI server
keeps the rightmost tokens of any prompt longer than the window allows. The tokenizer is the engine's (a
vocabulary-only worker), so these counts are exact, where the other rules estimate from characters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from edgeeval.config.tasks import ContextSpec
from edgeeval.data.example import Example
from edgeeval.errors import TemplateError
from edgeeval.prompting.context import Fitted, documents_of, fit_example, with_field
from edgeeval.types import ErrorKind, Failure

Render = Callable[[Example], str]
TOKEN_RULES = ("fill_documents", "keep_right")
"""The context rules that count the model's own tokens (the planner then needs the model's tokenizer)."""


class Tokenizer(Protocol):
    """The model's own tokenizer, as the engine offers it: counts include the model's start token where it adds
    one (as CLUE's `tokenizer.encode` counts it), and a slice is of those tokens."""

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def token_slice(self, text: str, start: int | None, end: int | None) -> str:
        """The text of tokens [start:end] of `text` (Python's slice rules)."""
        ...


class TokenCounter:
    """A tokenizer with its counts remembered by text: a LongHealth document is counted once, though every question
    of its patient and every repetition shows it."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._counts: dict[str, int] = {}

    def count(self, text: str) -> int:
        return self.counts([text])[0]

    def counts(self, texts: list[str]) -> list[int]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._counts))
        if missing:
            self._counts.update(zip(missing, self.tokenizer.count_tokens(missing)))
        return [self._counts[t] for t in texts]

    def head(self, text: str, tokens: int) -> str:
        return self.tokenizer.token_slice(text, 0, max(tokens, 0))

    def tail(self, text: str, tokens: int) -> str:
        return self.tokenizer.token_slice(text, -tokens, None) if tokens > 0 else ""


def fill_documents(example: Example, policy: ContextSpec, budget: int, render: Render, tokens: TokenCounter) -> Fitted:
    """CLUE's LongHealth prompt (eval_LongHealth.py, create_prompt): the documents in rank order (the answer's first)
    as long as the prompt stays within the cap, the first that does not fit cut to the tokens left, the rest left
    out; shown in the example's order. The cap is `max_prompt_tokens` (CLUE: 8,140) counted with everything else
    of the prompt (the system text, the question and options, the chat template), and never more than the window
    leaves for it."""
    assert policy.field is not None  # ContextSpec requires a field for this rule
    documents = documents_of(example, policy.field)
    cap = min(policy.max_prompt_tokens or budget, budget)
    frame = tokens.count(render(with_field(example, policy.field, [])))
    left = cap - frame
    if left <= 0:
        return _too_long(example, frame, cap, policy)
    ranked = sorted(documents, key=lambda d: d["rank"])
    kept: dict[int, dict[str, Any]] = {}
    cut_to: int | None = None
    for document, cost in zip(ranked, tokens.counts([d["text"] for d in ranked])):
        if cost <= left:
            kept[id(document)] = document
            left -= cost
            continue
        cut_to = left
        kept[id(document)] = {**document, "text": tokens.head(document["text"], left)}
        break
    candidate = with_field(example, policy.field, [kept[id(d)] for d in documents if id(d) in kept])
    candidate, total, cut_to = _within_cap(candidate, policy, cap, render, tokens, cut_to)
    if total > cap:
        return _too_long(example, total, cap, policy)
    dropped = len(documents) - len(candidate.fields[policy.field])
    if not dropped and cut_to is None:
        return Fitted(candidate)
    return Fitted(candidate, {"policy": policy.policy, "rule": policy.rule, "field": policy.field,
                              "cap_tokens": cap, "tokens": total, "documents_kept": len(documents) - dropped,
                              "documents_dropped": dropped, "last_document_cut_to_tokens": cut_to})


def _within_cap(candidate: Example, policy: ContextSpec, cap: int, render: Render, tokens: TokenCounter,
                cut_to: int | None) -> tuple[Example, int, int | None]:
    """The documents' costs were counted one by one, as CLUE counts them; the prompt they make is counted whole,
    and where the separators push it over the cap, the last document gives up the excess (or goes)."""
    assert policy.field is not None
    for _ in range(8):
        total = tokens.count(render(candidate))
        shown = list(candidate.fields[policy.field])
        if total <= cap or not shown:
            return candidate, total, cut_to
        last = max(shown, key=lambda d: d["rank"])
        keep = tokens.count(last["text"]) - (total - cap)
        rest = [d for d in shown if d is not last]
        shown = rest if keep <= 1 else [d if d is not last else {**last, "text": tokens.head(last["text"], keep)}
                                        for d in shown]
        cut_to = None if keep <= 1 else keep
        candidate = with_field(candidate, policy.field, shown)
    return candidate, tokens.count(render(candidate)), cut_to


def keep_right(text: str, budget: int, tokens: TokenCounter) -> tuple[str, dict[str, Any] | None]:
    """The prompt as CLUE's TGI server reads one that is too long (its `truncate` parameter): its rightmost
    tokens, as many as the window leaves (one fewer, for the start token the engine adds again)."""
    before = tokens.count(text)
    if before <= budget:
        return text, None
    kept = tokens.tail(text, budget - 1)
    return kept, {"rule": "keep_right", "tokens_before": before, "tokens_kept": budget - 1, "budget_tokens": budget}


def _too_long(example: Example, tokens: int, cap: int, policy: ContextSpec) -> Fitted:
    detail = (f"{tokens} tokens of the prompt without its {policy.field!r} already reach the cap of {cap} tokens "
              f"(context rule {policy.rule})")
    return Fitted(example, failure=Failure(ErrorKind.PROMPT_TOO_LONG, detail))


def needs_tokenizer(policy: ContextSpec) -> bool:
    return policy.policy == "truncate" and policy.rule in TOKEN_RULES


def fit(example: Example, policy: ContextSpec, budget: int, render: Render, tokens: TokenCounter | None) -> Fitted:
    """The task's context policy on one example: the rules that count tokens here, the estimating ones in
    context.py. keep_right cuts the whole prompt once it is rendered (`keep_right`), so nothing here."""
    if needs_tokenizer(policy) and policy.rule == "fill_documents":
        return fill_documents(example, policy, budget, render, require(tokens, policy))
    if needs_tokenizer(policy):
        return Fitted(example)
    return fit_example(example, policy, budget, render)


def require(tokens: TokenCounter | None, policy: ContextSpec) -> TokenCounter:
    if tokens is None:
        raise TemplateError(f"context rule {policy.rule} counts the model's own tokens; the planner has no "
                            "tokenizer for this model")
    return tokens
