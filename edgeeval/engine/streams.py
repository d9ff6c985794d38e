"""Batched generation's own context: one cache stream per sequence, and continuous batching through it.

In the main context's unified cache every token would attend over every sequence's cells (masked),
which costs more than the weights at 16 sequences; with a stream per sequence each attends over its own.
One more sequence, the holder, keeps a prefix that prompts share (engine/sharing.py): it is decoded once,
and a prompt that starts with it begins as a copy of the holder's stream (`llama_memory_seq_cp` between
streams copies the cells' data at the next decode). The holder stays between calls while the context is
kept. `layout="unified"` puts every sequence in one buffer instead, where the copy shares cells; the
speed benchmark measures both (benchmarks/speed, "sharing").
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
from edgeeval.engine.sharing import plan_share
from edgeeval.engine.slot import Slot
from edgeeval.engine.tokens import Vocabulary

Layout = str
"""'streams' (a cache stream per sequence, the default) or 'unified' (one buffer; measured, not used)."""


class Streams:
    """The context for batched generation, made when first needed and kept for the next call while it is
    big enough. It is fed through the main context's batch (`cache.batch`)."""

    def __init__(self, model: Any, vocabulary: Vocabulary, cache: PrefixCache, layout: Layout = "streams",
                 share: bool = True):
        self.model = model
        self.vocabulary = vocabulary
        self.cache = cache
        self.settings = cache.settings
        self.counters = cache.counters
        self.layout = layout
        self.share = share  # False: every prompt decoded whole (the benchmark's "before")
        self._made: tuple[Any, int, int, int] | None = None  # (context, sequences, cells each, outputs)
        self.held: list[int] = []  # the tokens of the holder sequence (the context's last)

    def generate(self, tokens: list[list[int]], todo: list[int], results: list[Generation | None], max_tokens: int,
                 stop: list[str], n_parallel: int, per_seq: int, n_outputs: int, ignore_eos: bool,
                 new_drafter: Callable[[], Drafter | None]) -> None:
        """Answer the prompts `todo` (indexes into `tokens`) on n_parallel sequences of per_seq cells each,
        into `results`; a finished sequence's slot goes to the next prompt in the queue."""
        ctx = self._context(n_parallel + 1, per_seq, n_outputs)
        memory = L.llama_get_memory(ctx)
        try:
            self._run(ctx, tokens, todo, results, max_tokens, stop, n_parallel, ignore_eos, new_drafter)
        except BaseException:
            L.llama_memory_clear(memory, False)
            self.held = []
            raise
        finally:
            for seq in range(n_parallel):
                L.llama_memory_seq_rm(memory, seq, -1, -1)

    def _context(self, n_seq: int, per_seq: int, n_outputs: int) -> Any:
        """n_seq sequences (the last is the holder) of per_seq cells each, at most n_outputs rows of logits
        per decode."""
        per_seq = -(-per_seq // 256) * 256
        n_outputs = max(n_outputs, n_seq)  # llama.cpp reserves a row per sequence at least
        have = self._made
        if have is not None and have[1] >= n_seq and have[2] >= per_seq and have[3] >= n_outputs:
            return have[0]
        self.close()
        n_batch = self.cache.n_batch
        ctx = new_context(self.model, self.settings, n_ctx=n_seq * per_seq, n_batch=n_batch,
                          n_ubatch=min(self.settings.n_ubatch, n_batch), n_seq_max=n_seq, n_outputs=n_outputs,
                          unified=self.layout == "unified")
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n_seq} sequences of {per_seq} tokens")
        self._made = (ctx, n_seq, per_seq, n_outputs)
        return ctx

    def _start(self, ctx: Any, seq: int, toks: list[int], following: list[int] | None) -> int:
        """Start sequence `seq` on the prompt `toks`: from a copy of the holder where they share a prefix,
        the holder first set for it and the prompt queued next where that shares more. Returns the prompt
        tokens that came from the holder."""
        if not self.share:
            return 0
        assert self._made is not None
        holder = self._made[1] - 1
        share = plan_share(self.held, toks, following)
        if share.changes_holder:
            memory = L.llama_get_memory(ctx)
            if share.keep < len(self.held):
                if L.llama_memory_seq_rm(memory, holder, share.keep, -1):
                    self.held = self.held[: share.keep]
                else:  # a cache that cannot drop a tail: the holder starts again, empty
                    L.llama_memory_seq_rm(memory, holder, -1, -1)
                    self.held, share = [], plan_share([], toks, following)
            self._extend_holder(ctx, holder, share.extend)
        if share.use:
            memory = L.llama_get_memory(ctx)
            L.llama_memory_seq_cp(memory, holder, seq, -1, -1)
            L.llama_memory_seq_rm(memory, seq, share.use, -1)
        return share.use

    def _extend_holder(self, ctx: Any, holder: int, tokens: list[int]) -> None:
        """Decode `tokens` after what the holder holds, in batches of their own."""
        batch = self.cache.batch
        assert batch is not None, "model closed"
        for begin in range(0, len(tokens), batch.capacity):
            batch.clear()
            chunk = tokens[begin : begin + batch.capacity]
            batch.add(chunk, len(self.held), [holder])
            try:
                checked_decode(ctx, batch.raw_for_decode(), batch.n, self.counters)
            except RuntimeError:
                self.held = []
                raise
            self.held.extend(chunk)
            self.counters["prompt_tokens_decoded"] += len(chunk)

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
                seq, started = free_seqs.pop(), time.perf_counter()
                shared = self._start(ctx, seq, toks, tokens[waiting[0]] if waiting else None)
                slot = Slot(index=index, seq=seq, tokens=toks, fed=shared,
                            room=min(max_tokens, self.cache.n_ctx - len(toks)), started=started,
                            ignore_eos=ignore_eos, drafter=new_drafter(), shared=shared)
                active.append(slot)
                self.counters["prompt_tokens"] += len(toks)
                self.counters["prompt_tokens_decoded"] += len(toks) - shared
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
                    results[slot.index] = slot.generation(slot.shared)
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
        self.held = []
