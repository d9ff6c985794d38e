"""Where speculative decoding gets its drafts: n-gram lookup in the text so far, or a small draft model.

A drafter proposes the next tokens of a sequence; the target model checks them all in one decode and
keeps the longest prefix its own greedy choice agrees with, so the answer is the greedy answer (up to
near-ties in quantized kernels, which round differently for a batch of k+1 tokens than for one).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

DRAFT_P_MIN = 0.75
"""A draft model stops drafting where its top token's probability is below this: a token it is unsure of
is likely rejected, and every token drafted costs a decode of the draft model (llama.cpp's server has the
same cut-off, --draft-p-min; its llama-speculative example drafts --draft-max tokens always)."""
LOOKUP_NGRAM_MAX = 3
LOOKUP_NGRAM_MIN = 2
"""Prompt lookup matches the last 3 tokens, else the last 2: a summary copies phrases. One-token
matches drafted mostly wrong continuations on the demo models (6% of drafted tokens kept)."""


class Drafter(Protocol):
    name: str

    def propose(self, history: list[int], n: int) -> list[int]:
        """Up to n tokens likely to follow `history` (prompt + answer so far); may be empty."""
        ...


class DraftTarget(Protocol):
    """What drafting uses of a model (a LlamaModel): its prefix sequence and its vocabulary."""

    @property
    def n_ctx(self) -> int: ...

    @property
    def n_vocab(self) -> int: ...

    def feed_prompt(self, tokens: list[int]) -> int: ...

    def logits(self, index: int) -> np.ndarray: ...

    def append_tokens(self, tokens: list[int]) -> None: ...

    def is_end(self, token: int) -> bool: ...

    def token_text(self, token: int) -> bytes: ...


class PromptLookup:
    """Drafts by copying: the tokens that followed the latest earlier occurrence of the sequence's
    last n-gram (in the prompt or the answer so far). No model, no decode; a miss drafts nothing."""

    name = "lookup"

    def __init__(self, ngram_max: int = LOOKUP_NGRAM_MAX, ngram_min: int = LOOKUP_NGRAM_MIN):
        self.sizes = list(range(ngram_max, ngram_min - 1, -1))
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self._indexed = 0  # history[:_indexed] has its n-grams in the index

    def propose(self, history: list[int], n: int) -> list[int]:
        self._extend(history)
        if n <= 0:
            return []
        for size in self.sizes:
            if len(history) < size:
                continue
            start = self._index[size].get(tuple(history[-size:]))
            if start is not None:
                return history[start : start + n]
        return []

    def _extend(self, history: list[int]) -> None:
        # An n-gram is indexed once the token after it is known, so the tail itself is never its own
        # match: the index maps an n-gram to where its latest continuation starts.
        for end in range(max(self._indexed, 1), len(history)):
            for size in self.sizes:
                if end >= size:
                    self._index[size][tuple(history[end - size : end])] = end
        self._indexed = max(self._indexed, len(history))


class DraftModel:
    """Drafts with a smaller model of the same vocabulary: greedy tokens from its own context, which
    keeps the longest common prefix with the sequence between calls. Drafting stops early where the
    draft model is unsure (its top token below `p_min`)."""

    name = "draft"

    def __init__(self, model: DraftTarget, p_min: float | None = None):
        self.model = model
        self.p_min = DRAFT_P_MIN if p_min is None else p_min

    def propose(self, history: list[int], n: int) -> list[int]:
        if n <= 0:
            return []
        model = self.model
        if len(history) + n >= model.n_ctx:
            return []
        model.feed_prompt(history)
        out: list[int] = []
        while True:
            row = model.logits(-1)
            token = int(np.argmax(row))
            if model.is_end(token) or _top_probability(row) < self.p_min:
                break
            out.append(token)
            if len(out) >= n:
                break
            model.append_tokens([token])
        return out


def _top_probability(row: np.ndarray) -> float:
    top = float(row.max())
    return 1.0 / float(np.exp(row.astype(np.float64) - top).sum())


def vocabulary_mismatch(target: DraftTarget, draft: DraftTarget) -> str | None:
    """Why `draft` cannot draft for `target` (another token count, or a token spelled differently), or None."""
    if target.n_vocab != draft.n_vocab:
        return f"{target.n_vocab} tokens vs {draft.n_vocab}"
    for token in range(target.n_vocab):
        a, b = target.token_text(token), draft.token_text(token)
        if a != b:
            return f"token {token} is {a!r} vs {b!r}"
    return None
