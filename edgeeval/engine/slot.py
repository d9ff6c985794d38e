"""One answer being generated: where it stops (the one place that decides), and its drafts while
speculative decoding checks them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeeval.engine import Generation
from edgeeval.engine.drafting import Drafter
from edgeeval.engine.llama_context import Counters
from edgeeval.engine.tokens import Vocabulary
from edgeeval.types import FinishReason


@dataclass
class Slot:
    """One prompt being answered: by `generate` on the prefix sequence, or by generate_many on a sequence
    of its own."""

    index: int
    seq: int
    tokens: list[int]
    fed: int
    room: int
    started: float
    last: int = -1
    n_out: int = 0
    out: bytearray = field(default_factory=bytearray)
    text: str = ""
    reason: FinishReason | None = None
    ignore_eos: bool = False
    drafter: Drafter | None = None
    generated: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    budget: int = 0
    """Tokens the next draft may have (0: not set yet): doubled after a draft taken whole, halved after one
    rejected at its first token, so a sequence whose drafts keep failing stops paying for them."""
    pause: int = 0
    """Steps to go without drafting, after a one-token draft failed."""
    shared: int = 0
    """Prompt tokens that came from a shared prefix instead of being decoded for this answer."""

    def accept(self, token: int, vocabulary: Vocabulary, max_tokens: int, stop: list[str]) -> bool:
        """Take the next greedy token; returns whether the answer is complete (`reason` says why: end of
        turn or a stop string, max_tokens, the context window full)."""
        if not self.ignore_eos and vocabulary.is_end(token):
            self.text, self.reason = self.out.decode("utf-8", errors="replace"), "stop"
            return True
        self.out += vocabulary.piece(token)
        self.n_out += 1
        self.last = token
        self.generated.append(token)
        text = self.out.decode("utf-8", errors="ignore")
        cut = _first_stop(text, stop)
        if cut is not None:
            self.text, self.reason = text[:cut], "stop"
        elif self.n_out >= max_tokens:
            self.text, self.reason = self.out.decode("utf-8", errors="replace"), "length"
        elif self.n_out >= self.room:
            self.text, self.reason = self.out.decode("utf-8", errors="replace"), "context"
        return self.reason is not None

    def propose(self, n_draft: int, max_tokens: int) -> list[int]:
        """The draft for the next step: no more tokens than the answer may still take after the one
        the step decodes anyway (max_tokens, the context window)."""
        if self.drafter is None:
            return []
        if self.pause:
            self.pause -= 1
            return []
        self.budget = min(self.budget or n_draft, n_draft)
        limit = min(self.budget, max_tokens - self.n_out - 1, self.room - self.n_out - 1)
        if limit <= 0:
            return []
        draft = self.drafter.propose(self.tokens + self.generated, limit)[:limit]
        self.drafted += len(draft)
        return draft

    def verify(self, draft: list[int], rows: list[np.ndarray], vocabulary: Vocabulary, max_tokens: int,
               stop: list[str]) -> tuple[int, bool]:
        """Take the greedy token of each row (row i follows draft[i-1]) while the previous one agreed
        with the draft. Returns (draft tokens taken, so whose cells stay; whether the answer is complete)."""
        for i, row in enumerate(rows):
            token = int(np.argmax(row))
            if self.accept(token, vocabulary, max_tokens, stop):
                return i, True
            if i == len(draft) or token != draft[i]:
                self._adapt(len(draft), i)
                return i, False
            self.accepted += 1
        return len(draft), False  # not reached: the last row always returns

    def _adapt(self, drafted: int, taken: int) -> None:
        if not drafted:
            return
        if taken == drafted:
            self.budget *= 2
        elif taken == 0:
            if self.budget == 1:
                self.pause = 4
            self.budget = max(1, self.budget // 2)

    def count(self, counters: Counters) -> None:
        """Add the finished answer's tokens and drafts to the model's counters."""
        counters["generated_tokens"] += self.n_out
        counters["drafted_tokens"] += self.drafted
        counters["accepted_tokens"] += self.accepted

    def generation(self, reused: int) -> Generation:
        notes: dict[str, Any] = {"prefix_tokens_reused": reused}
        if self.drafter is not None:
            notes["speculative"] = {"method": self.drafter.name, "drafted": self.drafted, "accepted": self.accepted}
        return Generation(text=self.text, n_prompt_tokens=len(self.tokens), n_output_tokens=self.n_out,
                          finish_reason=self.reason, seconds=time.perf_counter() - self.started, notes=notes)


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
