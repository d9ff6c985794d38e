"""Fitting a prompt into the model's context window by the task's declared policy, before it is sent."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeeval.config.tasks import ContextSpec
from edgeeval.data.example import Example
from edgeeval.errors import TemplateError
from edgeeval.types import ErrorKind, Failure

Render = Callable[[Example], str]
_ATTEMPTS = 8


@dataclass(frozen=True)
class Fitted:
    """The example as it will be prompted: cut (`truncation` says how) or not; or `failure` if it cannot fit."""

    example: Example
    truncation: dict | None = None
    failure: Failure | None = None


def fit_example(example: Example, policy: ContextSpec, budget: int, render: Render) -> Fitted:
    """Apply `policy` so that render(example) is estimated to fit `budget` tokens (the window less the
    answer's max tokens). Under 'skip' nothing is cut: the engine records a prompt that is too long.
    The estimate is characters / chars_per_token because only the engine can tokenize; the engine still
    refuses, and records, a cut prompt that turns out too long after all."""
    if policy.policy == "skip":
        return Fitted(example)
    assert policy.rule in ("drop_middle", "drop_documents"), "the token rules are token_budget.py's"
    estimate = estimate_tokens(render(example), policy)
    if estimate <= budget:
        return Fitted(example)
    if policy.field not in example.fields:
        raise TemplateError(f"context policy: the prompt has no field {policy.field!r} to cut "
                            f"(fields: {', '.join(sorted(example.fields))})")
    cut = _drop_documents if policy.rule == "drop_documents" else _drop_middle
    return cut(example, policy, budget, render, estimate)


def estimate_tokens(text: str, policy: ContextSpec) -> int:
    return math.ceil(len(text) / policy.chars_per_token)


def _drop_middle(example: Example, policy: ContextSpec, budget: int, render: Render, before: int) -> Fitted:
    """Keep the head and the tail of the field's text, drop its middle."""
    assert policy.field is not None  # fit_example found it among the example's fields
    text = example.fields[policy.field]
    if not isinstance(text, str):
        raise TemplateError(f"context rule drop_middle needs a text field; {policy.field!r} is {type(text).__name__}")
    fitted = _shorten(example, policy, budget, render, before, lambda keep: _middle_cut(text, keep), len(text))
    if fitted is None:
        return _too_long(example, before, budget, policy)
    candidate, estimate, keep = fitted
    return Fitted(candidate, _note(policy, before, estimate, budget, chars_dropped=len(text) - keep))


def _drop_documents(example: Example, policy: ContextSpec, budget: int, render: Render, before: int) -> Fitted:
    """Drop the least relevant documents (highest rank) until the prompt fits; if the most relevant one
    alone is still too long, keep its head."""
    assert policy.field is not None  # fit_example found it among the example's fields
    documents = documents_of(example, policy.field)
    kept = sorted(documents, key=lambda d: d["rank"])
    candidate, estimate = example, before
    while len(kept) > 1 and estimate > budget:
        kept.pop()
        candidate = with_field(example, policy.field, [d for d in documents if d in kept])
        estimate = estimate_tokens(render(candidate), policy)
    dropped = len(documents) - len(kept)
    if estimate <= budget:
        return Fitted(candidate, _note(policy, before, estimate, budget, documents_dropped=dropped))
    last = kept[0]
    fitted = _shorten(candidate, policy, budget, render, estimate,
                      lambda keep: [{**last, "text": _head_cut(last["text"], keep)}], len(last["text"]))
    if fitted is None:
        return _too_long(example, before, budget, policy)
    candidate, estimate, keep = fitted
    return Fitted(candidate, _note(policy, before, estimate, budget, documents_dropped=dropped,
                                   chars_dropped=len(last["text"]) - keep))


def _shorten(example: Example, policy: ContextSpec, budget: int, render: Render, estimate: int,
             cut: Callable[[int], Any], length: int) -> tuple[Example, int, int] | None:
    """Cut the field to fewer and fewer characters (cut(keep) gives its new value) until it fits;
    (example, estimate, characters kept) or None."""
    assert policy.field is not None  # fit_example found it among the example's fields
    keep = length
    for _ in range(_ATTEMPTS):
        keep -= math.ceil((estimate - budget) * policy.chars_per_token) + len(_marker(length)) + 8
        if keep <= 0:
            return None
        candidate = with_field(example, policy.field, cut(keep))
        estimate = estimate_tokens(render(candidate), policy)
        if estimate <= budget:
            return candidate, estimate, keep
    return None


def _middle_cut(text: str, keep: int) -> str:
    head = keep - keep // 2
    return text[:head] + _marker(len(text) - keep) + text[len(text) - keep // 2:]


def _head_cut(text: str, keep: int) -> str:
    return text[:keep] + _marker(len(text) - keep)


def _marker(dropped: int) -> str:
    return f"\n[... {dropped} characters left out to fit the context window ...]\n"


def documents_of(example: Example, field: str) -> list[dict[str, Any]]:
    documents = example.fields[field]
    if not isinstance(documents, list) or not all(isinstance(d, dict) and "rank" in d and "text" in d
                                                  for d in documents):
        raise TemplateError(f"context rules drop_documents and fill_documents need {field!r} to be a list of "
                            "{text, rank} documents")
    return documents


def with_field(example: Example, field: str, value: Any) -> Example:
    return example.model_copy(update={"fields": {**example.fields, field: value}})


def _note(policy: ContextSpec, before: int, after: int, budget: int, **dropped: int) -> dict:
    return {"policy": policy.policy, "rule": policy.rule, "field": policy.field, "chars_per_token": policy.chars_per_token,
            "estimated_tokens_before": before, "estimated_tokens_after": after, "budget_tokens": budget, **dropped}


def _too_long(example: Example, estimate: int, budget: int, policy: ContextSpec) -> Fitted:
    kind = ErrorKind.PROMPT_TOO_LONG
    detail = (f"about {estimate} tokens (at {policy.chars_per_token} characters per token) do not fit "
              f"the {budget} tokens the window leaves for the prompt, even with {policy.field!r} cut "
              f"(context policy {policy.policy}, rule {policy.rule})")
    return Fitted(example, failure=Failure(kind, detail))
