"""llama.cpp through llama-cpp-python's low-level API: load a GGUF once, generate greedily."""

from __future__ import annotations

import ctypes
import os
import time

import llama_cpp as L
import numpy as np

from edgeeval.engine import EngineSettings, Generation

_LOG_ERROR = 4


@L.llama_log_callback
def _quiet_log(level, text, user_data):  # pragma: no cover - called from C
    # llama.cpp is chatty on load; keep only errors, on stderr.
    if level >= _LOG_ERROR and level != 5:
        os.write(2, text)


class LlamaModel:
    """A model and one context. Greedy decoding is argmax over the last position's logits."""

    def __init__(self, path: str, settings: EngineSettings):
        if not os.environ.get("EDGEEVAL_LLAMA_LOG"):
            L.llama_log_set(_quiet_log, ctypes.c_void_p())
        L.llama_backend_init()
        self.settings = settings
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 999
        mparams.use_extra_bufts = bool(settings.use_extra_bufts)
        self.model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cparams = L.llama_context_default_params()
        cparams.n_ctx = settings.n_ctx
        cparams.n_batch = settings.n_batch
        cparams.n_ubatch = settings.n_ubatch
        cparams.n_threads = settings.n_threads
        cparams.n_threads_batch = settings.n_threads
        cparams.n_seq_max = 1
        cparams.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {settings.n_ctx} tokens (try a smaller n_ctx)")
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.memory = L.llama_get_memory(self.ctx)
        self._cached: list[int] = []  # tokens whose keys/values are in the cache, for prefix reuse

    def info(self) -> dict:
        return {
            "llama_cpp_python": L.__version__,
            "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
            "gpu_offload": bool(L.llama_supports_gpu_offload()),
            "n_ctx": self.n_ctx,
            "n_ctx_train": L.llama_model_n_ctx_train(self.model),
            "n_vocab": self.n_vocab,
            "settings": self.settings.__dict__,
        }

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (L.llama_token * capacity)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, capacity, True, True)
        if n < 0:
            capacity = -n
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, capacity, True, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def generate(self, prompt: str, max_tokens: int, stop: list[str]) -> Generation:
        start = time.perf_counter()
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            return Generation(
                text=None,
                n_prompt_tokens=len(tokens),
                finish_reason="error",
                error=f"prompt_too_long: {len(tokens)} prompt tokens do not fit the {self.n_ctx}-token context window",
                seconds=time.perf_counter() - start,
            )
        reused = self._feed_prompt(tokens)
        text, n_out, reason = self._decode_loop(len(tokens), max_tokens, stop)
        return Generation(
            text=text,
            n_prompt_tokens=len(tokens),
            n_output_tokens=n_out,
            finish_reason=reason,
            seconds=time.perf_counter() - start,
            notes={"prefix_tokens_reused": reused},
        )

    def _feed_prompt(self, tokens: list[int]) -> int:
        """Decode the prompt, keeping the longest prefix already in the cache; returns tokens reused."""
        keep = 0
        for old, new in zip(self._cached, tokens):
            if old != new:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # the last prompt token must be decoded for its logits
        if keep == 0 or not L.llama_memory_seq_rm(self.memory, 0, keep, -1):
            # Some caches (sliding-window attention) cannot drop a tail; start clean then.
            L.llama_memory_clear(self.memory, True)
            keep = 0
        self._cached = tokens[:keep]
        for begin in range(keep, len(tokens), self.settings.n_batch):
            self._decode(tokens[begin : begin + self.settings.n_batch])
        return keep

    def _decode(self, chunk: list[int]) -> None:
        arr = (L.llama_token * len(chunk))(*chunk)
        rc = L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(chunk)))
        if rc != 0:
            self._cached = []
            raise RuntimeError(f"llama_decode failed with status {rc}")
        self._cached.extend(chunk)

    def _decode_loop(self, n_prompt: int, max_tokens: int, stop: list[str]) -> tuple[str, int, str]:
        out = bytearray()
        n_out = 0
        room = self.n_ctx - n_prompt
        while True:
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            token = int(np.argmax(logits))
            if L.llama_vocab_is_eog(self.vocab, token):
                return out.decode("utf-8", errors="replace"), n_out, "stop"
            out += self.piece(token)
            n_out += 1
            text = out.decode("utf-8", errors="ignore")
            cut = _first_stop(text, stop)
            if cut is not None:
                return text[:cut], n_out, "stop"
            if n_out >= max_tokens:
                return out.decode("utf-8", errors="replace"), n_out, "length"
            if n_out >= room:
                return out.decode("utf-8", errors="replace"), n_out, "context"
            self._decode([token])

    def close(self) -> None:
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
