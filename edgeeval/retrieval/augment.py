"""Retrieved passages into a prompt: chosen per example, fitted to the passage budget and the context window
(passages go before the question or the options ever would), and described for the record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import jinja2
from jinja2 import meta

from edgeeval.config.models import RetrievalSpec
from edgeeval.config.tasks import ContextSpec
from edgeeval.data.example import Example
from edgeeval.errors import ConfigError
from edgeeval.prompting.context import estimate_tokens
from edgeeval.prompting.prompts import TaskPrompt
from edgeeval.retrieval import leakage
from edgeeval.retrieval.index import Hit

PASSAGES_VARIABLE = "passages"
"""A task template that names this variable places the passages itself; other templates are wrapped."""
_MIN_TRIMMED_CHARS = 200
"""A passage cut to fit the window keeps at least this much text, or is dropped."""


@dataclass(frozen=True)
class Selection:
    """The passages one prompt shows, and what the audit needs to know about how they were chosen."""

    hits: list[Hit]
    leaked: list[str]
    """Ids of candidate passages that contain the item's own query text (near-duplicates)."""
    excluded: int = 0
    """Passages left out because they were leaks and `exclude_leaks` is set."""
    trimmed_chars: int = 0
    dropped_for_context: int = 0


class Retrieval:
    """A model's retrieval prepared for a run: settings, index and the template that places the passages."""

    def __init__(self, spec: RetrievalSpec, corpus: Path, index, template: TaskPrompt):
        self.spec = spec
        self.corpus = corpus
        self.index = index
        self.template = template

    def close(self) -> None:
        """Stop what the index runs besides this process (an embedding model's worker); searching again
        starts it anew."""
        close = getattr(self.index, "close", None)
        if close is not None:
            close()

    def manifest(self) -> dict:
        """The model's `retrieval` entry in manifest.json."""
        return {**self.spec.model_dump(), "corpus_path": str(self.corpus), "corpus_sha256": self.index.corpus_sha256,
                "index": self.index.key, "passages": len(self.index.passages), "template_sha256":
                hashlib.sha256(self.template.text.encode()).hexdigest()}

    def select(self, query: str, chars_per_token: float) -> Selection:
        """The best `k` passages for `query` within the passage budget; leaks found among the candidates."""
        candidates = self.index.search(query, self.spec.k + leakage.CANDIDATES)
        leaked = [h.passage.id for h in candidates
                  if leakage.is_near_duplicate(query, h.passage.text, self.spec.leak_threshold)]
        shown = candidates
        if self.spec.exclude_leaks:
            shown = [h for h in candidates if h.passage.id not in leaked]
        excluded = sum(1 for h in candidates[: self.spec.k] if h.passage.id in leaked) if self.spec.exclude_leaks else 0
        hits, trimmed = within_budget(shown[: self.spec.k], self.spec.passage_tokens, chars_per_token)
        return Selection(hits, leaked, excluded, trimmed)

    def fit_window(self, selection: Selection, render: Callable[[list[Hit]], str], budget: int,
                   policy: ContextSpec) -> Selection:
        """Drop the lowest-ranked passages, then cut the last one, until the estimated prompt fits `budget`;
        the task's own text is never touched here."""
        hits = list(selection.hits)
        dropped, trimmed = 0, selection.trimmed_chars
        while hits and estimate_tokens(render(hits), policy) > budget:
            if len(hits) == 1:
                over = estimate_tokens(render(hits), policy) - budget
                keep = len(hits[0].passage.text) - int(over * policy.chars_per_token) - 16
                if keep >= _MIN_TRIMMED_CHARS:
                    trimmed += len(hits[0].passage.text) - keep
                    hits = [_cut(hits[0], keep)]
                    if estimate_tokens(render(hits), policy) <= budget:
                        break
            hits.pop()
            dropped += 1
        return Selection(hits, selection.leaked, selection.excluded, trimmed, dropped)

    def audit(self, selection: Selection, query_fields: list[str], policy: ContextSpec) -> dict:
        """The record's `retrieval` field: what was shown, a hash of its text, and how it was chosen."""
        texts = [h.passage.text for h in selection.hits]
        return {
            "retriever": self.spec.retriever,
            "index": self.index.key,
            "query_fields": query_fields,
            "passages": [{"id": h.passage.id, "source": h.passage.source, "score": round(h.score, 6), "rank": h.rank}
                         for h in selection.hits],
            "text_sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest(),
            "n_passage_tokens": sum(estimate_tokens(t, policy) for t in texts),
            "leaked": selection.leaked,
            "excluded": selection.excluded,
            "trimmed_chars": selection.trimmed_chars,
            "dropped_for_context": selection.dropped_for_context,
        }


def query_text(example: Example, fields: list[str], task: str) -> str:
    """The example's query: the named fields' text, joined by blank lines."""
    missing = [f for f in fields if f not in example.fields]
    if missing:
        raise ConfigError(f"task '{task}': retrieval.query names field(s) {', '.join(missing)} that example "
                          f"{example.id} does not have (fields: {', '.join(sorted(example.fields))})")
    return "\n\n".join(_as_text(example.fields[f]) for f in fields)


def _as_text(value) -> str:
    if isinstance(value, dict):
        return "\n".join(f"{k}. {v}" for k, v in value.items())
    if isinstance(value, list):
        return "\n".join(_as_text(v) for v in value)
    return str(value)


def within_budget(hits: list[Hit], budget: int, chars_per_token: float) -> tuple[list[Hit], int]:
    """The hits, best first, whose estimated tokens fit `budget`: the one that overflows it is cut to what is
    left (when that is worth showing) and the rest are left out. Returns (hits, characters cut)."""
    used: float
    kept, used = [], 0
    for hit in hits:
        size = len(hit.passage.text) / chars_per_token
        if used + size <= budget:
            kept.append(hit)
            used += size
            continue
        keep = int((budget - used) * chars_per_token)
        if keep >= _MIN_TRIMMED_CHARS:
            kept.append(_cut(hit, keep))
            return kept, len(hit.passage.text) - keep
        return kept, 0
    return kept, 0


def _cut(hit: Hit, keep: int) -> Hit:
    text = hit.passage.text[:keep].rsplit(" ", 1)[0] + " …"
    return Hit(passage=type(hit.passage)(hit.passage.id, hit.passage.source, hit.passage.title, text),
               score=hit.score, rank=hit.rank)


@lru_cache(maxsize=64)
def uses_passages(template_text: str) -> bool:
    """Whether a task template places `passages` itself (parsed, not rendered)."""
    return PASSAGES_VARIABLE in meta.find_undeclared_variables(jinja2.Environment().parse(template_text))


def passage_fields(hits: list[Hit]) -> list[dict]:
    """The `passages` template variable: best first."""
    return [{"id": h.passage.id, "source": h.passage.source, "title": h.passage.title, "text": h.passage.text,
             "score": h.score, "rank": h.rank} for h in hits]


def user_message(retrieval: Retrieval, prompt: TaskPrompt, example: Example, hits: list[Hit]) -> str:
    """The question's user message with passages: placed by the task's template when it names `passages`,
    else by the retrieval template around the task's own message."""
    with_passages = example.model_copy(update={"fields": {**example.fields, PASSAGES_VARIABLE: passage_fields(hits)}})
    if uses_passages(prompt.text):
        return prompt.render(with_passages)
    wrapper = Example(id=example.id, fields={PASSAGES_VARIABLE: passage_fields(hits), "prompt": prompt.render(example)},
                      gold="", source=example.source)
    return retrieval.template.render(wrapper)
