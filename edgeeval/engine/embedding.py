"""Embeddings: for retrieval, the mean over a text's tokens of the model's last hidden state; for BERTScore,
every token's own vector of the last layer; each in a context of its own."""

from __future__ import annotations

from typing import Any

import llama_cpp as L
import numpy as np

from edgeeval.engine import EngineError, EngineSettings
from edgeeval.engine.llama_context import Batch, Counters, new_context, timed_decode
from edgeeval.engine.tokens import Vocabulary
from edgeeval.types import ErrorKind


class Embedder:
    """Embeds texts with a loaded model; its context is made on the first call and kept."""

    def __init__(self, model: Any, settings: EngineSettings, vocabulary: Vocabulary, counters: Counters):
        self.model = model
        self.settings = settings
        self.vocabulary = vocabulary
        self.counters = counters
        self._made: tuple[Any, Batch, int] | None = None
        self._per_token: tuple[Any, Batch, int] | None = None

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text: the mean over its tokens of the model's last hidden state
        (llama.cpp's MEAN pooling), each text cut to its first `n_tokens()` tokens. Texts are
        decoded several at a time, each as its own sequence, in a context of their own."""
        ctx, batch, n_tokens = self._context()
        n_embd = L.llama_model_n_embd(self.model)
        vectors: list[list[float]] = []
        pending = [self.vocabulary.tokenize(text)[:n_tokens] or [self.vocabulary.bos()] for text in texts]
        start = 0
        while start < len(pending):
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            batch.clear()
            group = 0
            while start + group < len(pending) and group < batch.n_seq_max:
                tokens = pending[start + group]
                if batch.n + len(tokens) > batch.capacity:
                    break
                first = batch.add(tokens, 0, [group])
                for index in range(first, first + len(tokens)):
                    batch.want_logits(index)
                group += 1
            status = timed_decode(ctx, batch.raw_for_decode(), self.counters)
            if status != 0:
                raise EngineError(ErrorKind.ENGINE, f"llama_decode returned {status} while embedding")
            for seq in range(group):
                row = L.llama_get_embeddings_seq(ctx, seq)
                if not row:
                    raise EngineError(ErrorKind.ENGINE, "llama.cpp returned no pooled embedding")
                vector = np.ctypeslib.as_array(row, shape=(n_embd,)).astype(np.float64)
                norm = float(np.linalg.norm(vector))
                vectors.append((vector / norm if norm > 0 else vector).tolist())
            self.counters["prompt_tokens"] += sum(len(t) for t in pending[start:start + group])
            start += group
        return vectors

    def token_vectors(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text, its tokens (cut to the first `n_tokens()`), which of them are the start and end tokens the
        model adds (BERT's [CLS] and [SEP], which BERTScore does not weigh), and each token's vector of the last
        layer (no pooling): what BERTScore matches. One text per decode, alone in the cache."""
        ctx, batch, n_tokens = self._token_context()
        n_embd = L.llama_model_n_embd(self.model)
        special = {self.vocabulary.bos(), self.vocabulary.eos(), self.vocabulary.sep()} - {-1}
        out = []
        for text in texts:
            tokens = self.vocabulary.tokenize(text)[:n_tokens] or [self.vocabulary.bos()]
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            batch.clear()
            first = batch.add(tokens, 0, [0])
            for index in range(first, first + len(tokens)):
                batch.want_logits(index)
            status = timed_decode(ctx, batch.raw_for_decode(), self.counters)
            if status != 0:
                raise EngineError(ErrorKind.ENGINE, f"llama_decode returned {status} while embedding tokens")
            rows = []
            for index in range(len(tokens)):
                row = L.llama_get_embeddings_ith(ctx, index)
                if not row:
                    raise EngineError(ErrorKind.ENGINE, "llama.cpp returned no token embedding")
                rows.append(np.ctypeslib.as_array(row, shape=(n_embd,)).astype(np.float64).tolist())
            self.counters["prompt_tokens"] += len(tokens)
            out.append({"tokens": tokens, "special": [t in special for t in tokens], "vectors": rows})
        return out

    def n_tokens(self) -> int:
        """The most tokens of a text that `embed` reads (the rest is cut)."""
        return min(self.settings.n_ctx, self.settings.n_batch)

    def _context(self) -> tuple[Any, Batch, int]:
        """A context made for embeddings (MEAN pooling, every token an output): the sequences of one
        decode share its cells and each lies whole in one micro-batch."""
        if self._made is None:
            n_tokens = self.n_tokens()
            n_seq = min(16, max(1, self.settings.n_seq_max))
            ctx = new_context(self.model, self.settings, n_ctx=n_tokens, n_batch=n_tokens, n_ubatch=n_tokens,
                              n_seq_max=n_seq, n_outputs=n_tokens, unified=True, flash_attn=False, embeddings=True)
            if not ctx:
                raise EngineError(ErrorKind.ENGINE, f"llama.cpp could not create an embedding context of {n_tokens} tokens")
            self._made = (ctx, Batch(n_tokens, n_seq), n_tokens)
        return self._made

    def _token_context(self) -> tuple[Any, Batch, int]:
        """A context for per-token vectors (no pooling), one sequence at a time, made once."""
        if self._per_token is None:
            n_tokens = self.n_tokens()
            ctx = new_context(self.model, self.settings, n_ctx=n_tokens, n_batch=n_tokens, n_ubatch=n_tokens,
                              n_seq_max=1, n_outputs=n_tokens, unified=True, flash_attn=False, embeddings=True,
                              per_token=True)
            if not ctx:
                raise EngineError(ErrorKind.ENGINE, f"llama.cpp could not create a token-embedding context of {n_tokens} "
                                  "tokens")
            self._per_token = (ctx, Batch(n_tokens, 1), n_tokens)
        return self._per_token

    def close(self) -> None:
        for made in (self._made, self._per_token):
            if made is not None:
                L.llama_free(made[0])
                made[1].free()
        self._made = self._per_token = None
