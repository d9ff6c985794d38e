"""The llama.cpp calls every part of the engine shares: one way to make a context, the batch it is fed
through, a counted decode and a row of logits.

Numbers: llama.cpp's quantized CPU kernels round differently for other batch layouts (which cells a
token's keys sit in, which tokens share a batch), and the 8-bit rounding of activations turns some of
those last-bit differences into visible ones: on the demo models a score moves by ~0.03 nats per
token (median) between the batched and the one-at-a-time paths. Flash attention is off by default
because it moves them far more. With float32 weights the paths agree to float precision.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import llama_cpp as L
import numpy as np

from edgeeval.engine import EngineSettings

_LOG_ERROR = 4

Counters = dict[str, float]
"""What a model has done, shown in info()["tokens"]: tokens read and generated, decodes and their time."""


def new_counters() -> Counters:
    return {"prompt_tokens": 0, "prompt_tokens_decoded": 0, "generated_tokens": 0,
            "decode_calls": 0, "decode_seconds": 0.0, "drafted_tokens": 0, "accepted_tokens": 0}


def library_build() -> dict[str, str]:
    """The llama.cpp build as the library reports it: ggml's version and the llama.cpp commit it was
    compiled from ('-dirty': with local changes; 'unknown': built outside git). llama-cpp-python does
    not bind these two functions, so they are looked up in the library it loaded."""
    found = {}
    for key in ("version", "commit"):
        function = getattr(L.llama_cpp._lib, f"ggml_{key}", None)
        if function is not None:
            function.argtypes, function.restype = [], ctypes.c_char_p
            found[key] = (function() or b"").decode(errors="replace")
    return found


@L.llama_log_callback  # type: ignore[untyped-decorator]  # llama_cpp ships no type information
def _quiet_log(level: int, text: bytes, user_data: Any) -> None:  # pragma: no cover - called from C
    # llama.cpp is chatty on load; keep only errors, on stderr.
    if level >= _LOG_ERROR and level != 5:
        os.write(2, text)


def quiet_llama_log() -> None:
    """Keep llama.cpp to its errors, unless EDGEEVAL_LLAMA_LOG asks for everything."""
    if not os.environ.get("EDGEEVAL_LLAMA_LOG"):
        L.llama_log_set(_quiet_log, ctypes.c_void_p())


def new_context(model: Any, settings: EngineSettings, *, n_ctx: int, n_batch: int, n_ubatch: int, n_seq_max: int,
                n_outputs: int, unified: bool, flash_attn: bool | None = None, embeddings: bool = False,
                per_token: bool = False) -> Any:
    """A llama.cpp context for `model` with the settings' threads; a null pointer where llama.cpp could not
    make one (the caller says what it wanted). `unified`: one KV buffer for all sequences, so they can share
    cells; else one stream per sequence. `flash_attn`: None follows the settings (off by default, see the
    module doc). `embeddings`: pooled embeddings (MEAN) instead of logits; with `per_token`, every token's
    own vector of the last layer (no pooling)."""
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_ubatch
    params.n_threads = params.n_threads_batch = settings.n_threads
    params.n_seq_max = n_seq_max
    params.n_outputs_max = n_outputs
    params.kv_unified = unified
    # Full-size sliding-window caches (Gemma 3): a prefix's cells stay, and a tail can be removed; every
    # context alike, so batched generation's numbers match one prompt at a time.
    params.swa_full = True
    use_flash = settings.flash_attn if flash_attn is None else flash_attn
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if use_flash else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    if embeddings:
        params.embeddings = True
        params.pooling_type = L.LLAMA_POOLING_TYPE_NONE if per_token else L.LLAMA_POOLING_TYPE_MEAN
    params.no_perf = True
    return L.llama_init_from_model(model, params)


def timed_decode(ctx: Any, batch: Any, counters: Counters) -> int:
    """llama_decode, counted in `counters`; returns its status (0: done)."""
    begin = time.perf_counter()
    status = L.llama_decode(ctx, batch)
    counters["decode_seconds"] += time.perf_counter() - begin
    counters["decode_calls"] += 1
    return int(status)


def checked_decode(ctx: Any, batch: Any, n_tokens: int, counters: Counters) -> None:
    """`timed_decode` that raises where llama.cpp could not decode the batch."""
    status = timed_decode(ctx, batch, counters)
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status} on a batch of {n_tokens} tokens")


def logits_row(ctx: Any, index: int, n_vocab: int) -> np.ndarray:
    """The logits of output `index` of the last decode (a view, valid until the next decode)."""
    ptr = L.llama_get_logits_ith(ctx, index)
    if not ptr:
        raise RuntimeError(f"llama.cpp returned no logits for output {index}")
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))


class Batch:
    """A llama_batch (llama_batch_init) filled from Python through numpy views of its arrays."""

    def __init__(self, capacity: int, n_seq_max: int):
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self.raw = L.llama_batch_init(capacity, 0, n_seq_max)
        self.token = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        self.seq_rows = [np.ctypeslib.as_array(self.raw.seq_id[i], shape=(n_seq_max,)) for i in range(capacity)]
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: list[int], pos0: int, seqs: list[int]) -> int:
        """Tokens at positions pos0, pos0+1, ... in each of `seqs`; no logits. Returns the first index."""
        first, k = self.n, len(tokens)
        self.token[first : first + k] = tokens
        self.pos[first : first + k] = np.arange(pos0, pos0 + k, dtype=np.int32)
        self.n_seq_id[first : first + k] = len(seqs)
        self.logits[first : first + k] = 0
        for row in self.seq_rows[first : first + k]:
            row[: len(seqs)] = seqs
        self.n += k
        return first

    def want_logits(self, index: int) -> None:
        self.logits[index] = 1

    def raw_for_decode(self) -> Any:
        self.raw.n_tokens = self.n
        return self.raw

    def free(self) -> None:
        if self.raw is not None:
            L.llama_batch_free(self.raw)
            self.raw = None
