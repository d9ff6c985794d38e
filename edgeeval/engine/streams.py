"""Batched generation's own context: one cache stream per sequence, and continuous batching through it.

In the main context's unified cache every token would attend over every sequence's cells (masked),
which costs more than the weights at 16 sequences; with a stream per sequence each attends over its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import llama_cpp as L

from edgeeval.engine import Generation
from edgeeval.engine.drafting import Drafter
from edgeeval.engine.llama_context import checked_decode, logits_row, new_context
from edgeeval.engine.prefix_cache import PrefixCache
from edgeeval.engine.slot import Slot
from edgeeval.engine.tokens import Vocabulary


class Streams:
    """The context for batched generation, made when first needed and kept for the next call while it is
    big enough. It is fed through the main context's batch (`cache.batch`)."""

    def __init__(self, model: Any, vocabulary: Vocabulary, cache: PrefixCache):
        self.model = model
        self.vocabulary = vocabulary
        self.cache = cache
        self.settings = cache.settings
        self.counters = cache.counters
        self._made: tuple[Any, int, int, int] | None = None  # (context, sequences, cells each, outputs)

    def generate(self, tokens: list[list[int]], todo: list[int], results: list[Generation | None], max_tokens: int,
                 stop: list[str], n_parallel: int, per_seq: int, n_outputs: int, ignore_eos: bool,
                 new_drafter: Callable[[], Drafter | None]) -> None:
        """Answer the prompts `todo` (indexes into `tokens`) on n_parallel sequences of per_seq cells each,
        into `results`; a finished sequence's slot goes to the next prompt in the queue."""
        ctx = self._context(n_parallel, per_seq, n_outputs)
        try:
            self._run(ctx, tokens, todo, results, max_tokens, stop, n_parallel, ignore_eos, new_drafter)
        finally:
            L.llama_memory_clear(L.llama_get_memory(ctx), False)

    def _context(self, n_seq: int, per_seq: int, n_outputs: int) -> Any:
        """n_seq sequences of per_seq cells each, at most n_outputs rows of logits per decode."""
        per_seq = -(-per_seq // 256) * 256
        have = self._made
        if have is not None and have[1] >= n_seq and have[2] >= per_seq and have[3] >= n_outputs:
            return have[0]
        self.close()
        n_batch = self.cache.n_batch
        ctx = new_context(self.model, self.settings, n_ctx=n_seq * per_seq, n_batch=n_batch,
                          n_ubatch=min(self.settings.n_ubatch, n_batch), n_seq_max=n_seq, n_outputs=n_outputs,
                          unified=False)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n_seq} sequences of {per_seq} tokens")
        self._made = (ctx, n_seq, per_seq, n_outputs)
        return ctx

    def _run(self, ctx: Any, tokens: list[list[int]], todo: list[int], results: list[Generation | None],
             max_tokens: int, stop: list[str], n_parallel: int, ignore_eos: bool,
             new_drafter: Callable[[], Drafter | None]) -> None:
        memory = L.llama_get_memory(ctx)
        batch = self.cache.batch
        assert batch is not None, "model closed"
        free_seqs = list(range(n_parallel - 1, -1, -1))
        waiting = deque(todo)
        active: list[Slot] = []
        while waiting or active:
            while waiting and free_seqs:
                index = waiting.popleft()
                toks = tokens[index]
                slot = Slot(index=index, seq=free_seqs.pop(), tokens=toks, fed=0,
                            room=min(max_tokens, self.cache.n_ctx - len(toks)), started=time.perf_counter(),
                            ignore_eos=ignore_eos, drafter=new_drafter())
                active.append(slot)
                self.counters["prompt_tokens"] += len(toks)
                self.counters["prompt_tokens_decoded"] += len(toks)
            outputs = self._fill_batch(active, max_tokens)
            checked_decode(ctx, batch.raw_for_decode(), batch.n, self.counters)
            for index, slot, draft in outputs:
                rows = [logits_row(ctx, index + i, self.cache.n_vocab) for i in range(len(draft) + 1)]
                taken, done = slot.verify(draft, rows, self.vocabulary, max_tokens, stop)
                if done:
                    active.remove(slot)
                    L.llama_memory_seq_rm(memory, slot.seq, -1, -1)
                    free_seqs.append(slot.seq)
                    slot.count(self.counters)
                    results[slot.index] = slot.generation(0)
                elif taken < len(draft):
                    # The cells of the draft tokens not taken; the last token taken is decoded next step.
                    L.llama_memory_seq_rm(memory, slot.seq, len(slot.tokens) + slot.n_out - 1, -1)

    def _fill_batch(self, active: list[Slot], max_tokens: int) -> list[tuple[int, Slot, list[int]]]:
        """For each sequence that is generating, its last token and its draft (if any), then prompt
        chunks for those still reading their prompt, up to n_batch tokens. Returns (first output row,
        sequence, draft) per sequence with outputs: rows first .. first + len(draft)."""
        batch = self.cache.batch
        assert batch is not None, "model closed"
        batch.clear()
        outputs = []
        generating = sum(1 for slot in active if slot.fed == len(slot.tokens))
        n_draft = min(self.settings.n_draft, (batch.capacity - generating) // max(1, generating))
        for slot in active:
            if slot.fed == len(slot.tokens):
                draft = slot.propose(n_draft, max_tokens)
                first = batch.add([slot.last, *draft], len(slot.tokens) + slot.n_out - 1, [slot.seq])
                for index in range(first, first + len(draft) + 1):
                    batch.want_logits(index)
                outputs.append((first, slot, draft))
        for slot in active:
            if slot.fed < len(slot.tokens) and batch.n < batch.capacity:
                take = min(len(slot.tokens) - slot.fed, batch.capacity - batch.n)
                first = batch.add(slot.tokens[slot.fed : slot.fed + take], slot.fed, [slot.seq])
                slot.fed += take
                if slot.fed == len(slot.tokens):
                    batch.want_logits(first + take - 1)
                    outputs.append((first + take - 1, slot, []))
        return outputs

    def close(self) -> None:
        if self._made is not None:
            L.llama_free(self._made[0])
            self._made = None
