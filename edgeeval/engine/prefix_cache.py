"""The main context and the shared prefix it keeps between calls.

The main context holds `n_seq_max` sequences in a unified KV cache. Sequence 0 keeps the prefix:
the tokens of the last prompt (or the common prefix of the last batch of items); every other
sequence is a working sequence that starts as a copy of it (`llama_memory_seq_cp` shares the cells,
it does not copy data) and is removed when its unit is done. Batched generation runs in a second
context (engine/streams.py).
"""

from __future__ import annotations

from typing import Any

import llama_cpp as L
import numpy as np

from edgeeval.engine import EngineSettings
from edgeeval.engine.llama_context import Batch, Counters, checked_decode, logits_row, new_context
from edgeeval.engine.sharing import common_prefix

PREFIX_SEQ = 0


class PrefixCache:
    """The main context, whose sequence 0 holds the tokens in `tokens`; a decode here appends to it."""

    def __init__(self, model: Any, settings: EngineSettings, n_outputs: int, n_vocab: int, counters: Counters):
        self.settings = settings
        self.max_outputs = n_outputs  # rows of logits one decode may ask for
        self.n_vocab = n_vocab
        self.counters = counters
        # unified: one buffer for all sequences, so a prefix copied to the option sequences shares its cells.
        self.ctx = new_context(model, settings, n_ctx=settings.n_ctx, n_batch=settings.n_batch,
                               n_ubatch=settings.n_ubatch, n_seq_max=settings.n_seq_max, n_outputs=n_outputs,
                               unified=True)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {settings.n_ctx} tokens (try a smaller n_ctx)")
        self.n_ctx: int = L.llama_n_ctx(self.ctx)
        self.n_batch = min(settings.n_batch, self.n_ctx)
        self.memory = L.llama_get_memory(self.ctx)
        self.batch: Batch | None = Batch(self.n_batch, settings.n_seq_max)  # None once closed
        self.tokens: list[int] = []  # the tokens of the prefix sequence (0) in the cache
        self._working_used = False  # whether any other sequence may hold cells

    def feed_prompt(self, tokens: list[int]) -> int:
        """Decode the prompt on the prefix sequence, keeping the longest prefix already in the
        cache (the last token is always decoded, for its logits); returns tokens reused."""
        keep = self.set_prefix(tokens, decode_last=True)
        self.counters["prompt_tokens"] += len(tokens)
        self.counters["prompt_tokens_decoded"] += len(tokens) - keep
        return keep

    def set_prefix(self, tokens: list[int], decode_last: bool = False) -> int:
        """Make the prefix sequence hold exactly `tokens`; returns how many were already there.
        `decode_last`: decode the last token even where it is cached, so its logits are there to read."""
        self.drop_working_sequences()
        keep = self._trim(tokens, len(tokens) - 1 if decode_last else len(tokens))
        for begin in range(keep, len(tokens), self.n_batch):
            self.append_tokens(tokens[begin : begin + self.n_batch])
        return keep

    def _trim(self, tokens: list[int], limit: int) -> int:
        """Cut the prefix sequence back to its common prefix with `tokens` (at most `limit`)."""
        keep = min(common_prefix(self.tokens, tokens), limit)
        if not self.truncate(keep):
            # A cache that cannot drop a tail (sliding window without swa_full): start clean.
            L.llama_memory_clear(self.memory, True)
            keep = 0
            self.tokens = []
        return keep

    def truncate(self, keep: int) -> bool:
        """Remove the prefix sequence's cells from `keep` on; False where the cache could not."""
        if keep >= len(self.tokens):
            return True
        removed = bool(L.llama_memory_seq_rm(self.memory, PREFIX_SEQ, keep, -1))
        self.tokens = self.tokens[:keep]
        return removed

    def append_tokens(self, tokens: list[int]) -> None:
        """Append tokens to the prefix sequence; logits are kept for the last one."""
        arr = (L.llama_token * len(tokens))(*tokens)
        self.decode(L.llama_batch_get_one(arr, len(tokens)), len(tokens))
        self.tokens.extend(tokens)

    def append_every_row(self, tokens: list[int]) -> None:
        """Append tokens to the prefix sequence in one decode, keeping the logits of every one (`logits(i)`):
        how a draft is verified."""
        batch = self.batch
        assert batch is not None, "model closed"
        batch.clear()
        batch.add(tokens, len(self.tokens), [PREFIX_SEQ])
        for index in range(len(tokens)):
            batch.want_logits(index)
        self.decode(batch.raw_for_decode(), batch.n)
        self.tokens.extend(tokens)

    def decode(self, batch: Any, n_tokens: int) -> None:
        try:
            checked_decode(self.ctx, batch, n_tokens, self.counters)
        except RuntimeError:
            # The cache no longer matches what we think is in it.
            L.llama_memory_clear(self.memory, True)
            self.tokens = []
            raise

    def logits(self, index: int) -> np.ndarray:
        """The logits of output `index` of the last decode (a view, valid until the next decode)."""
        return logits_row(self.ctx, index, self.n_vocab)

    def share_prefix(self, seq: int) -> None:
        """Start working sequence `seq` as the prefix (its cells shared, not copied)."""
        self._working_used = True
        L.llama_memory_seq_cp(self.memory, PREFIX_SEQ, seq, -1, -1)

    def drop_sequence(self, seq: int) -> None:
        L.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def drop_working_sequences(self) -> None:
        if self._working_used:
            for seq in range(1, self.settings.n_seq_max):
                self.drop_sequence(seq)
            self._working_used = False

    def close(self) -> None:
        if self.batch is not None:
            self.batch.free()
            self.batch = None
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
