"""llama.cpp through llama-cpp-python's low-level API: greedy generation, batched generation and
log-likelihood scoring, with the shared prefix of a task decoded once and kept in the KV cache.

`LlamaModel` loads the model and puts its parts together: the main context and its shared prefix
(prefix_cache.py), log-likelihood scoring (loglik.py), generation (generation.py, with slot.py for
where an answer stops and streams.py for batched generation's own context) and embeddings
(embedding.py); the contexts are all made by llama_context.new_context, which says why flash
attention is off and how far the batched and one-at-a-time numbers may differ.
"""

from __future__ import annotations

import time

from dataclasses import replace
from typing import Any

import llama_cpp as L
import numpy as np

from edgeeval.engine import EngineSettings, Generation, OptionScore
from edgeeval.engine.drafting import vocabulary_mismatch
from edgeeval.engine.embedding import Embedder
from edgeeval.engine.generation import Generator
from edgeeval.engine.llama_context import library_build, new_counters, quiet_llama_log
from edgeeval.engine.loglik import LoglikScorer
from edgeeval.engine.prefix_cache import PrefixCache
from edgeeval.engine.streams import Streams
from edgeeval.engine.tokens import Vocabulary

_LOGITS_BUDGET_BYTES = 64 << 20
"""At most this much memory for the logits of one llama_decode: it bounds the rows asked for
per call (64 rows of Gemma 3's 262k vocabulary), which bounds llama.cpp's output buffer too."""


CALIBRATION_TEXT = ("The patient, a 64-year-old man with diabetes and hypertension, presented with three days of fever, "
                    "productive cough and shortness of breath; the chest film showed a right lower lobe infiltrate. ")
"""What `calibrate` decodes: clinical prose, tokenized as the prompts of a run are."""


class LlamaModel:
    """A model and its contexts. Greedy decoding is argmax over the last position's logits."""

    def __init__(self, path: str, settings: EngineSettings):
        quiet_llama_log()
        L.llama_backend_init()
        if settings.n_seq_max < 2:
            raise ValueError("n_seq_max must be at least 2 (one sequence keeps the shared prefix)")
        self.settings = settings
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 999
        mparams.use_extra_bufts = bool(settings.use_extra_bufts)
        mparams.vocab_only = settings.vocab_only
        self.model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocabulary = Vocabulary(L.llama_model_get_vocab(self.model))
        self.n_vocab = self.vocabulary.n_tokens
        self.max_outputs = max(settings.n_seq_max, min(settings.n_batch, _LOGITS_BUDGET_BYTES // (4 * self.n_vocab)))
        self.counters = new_counters()
        self.n_ctx = settings.n_ctx
        if settings.vocab_only:  # the planner's tokenizer: no weights, no context
            self.draft = None
            return
        self.embedder = Embedder(self.model, settings, self.vocabulary, self.counters)
        if settings.embeddings_only:  # an encoder: its embeddings' own contexts only
            self.draft = None
            return
        self.cache = PrefixCache(self.model, settings, self.max_outputs, self.n_vocab, self.counters)
        self.n_ctx = self.cache.n_ctx
        self.n_batch = self.cache.n_batch
        self.scorer = LoglikScorer(self.vocabulary, self.cache)
        self.draft = self._load_draft(path, settings) if settings.draft_model else None
        self.streams = Streams(self.model, self.vocabulary, self.cache, share=settings.share_prefixes)
        self.generator = Generator(self.vocabulary, self.cache, self.streams, self.draft)

    def _load_draft(self, path: str, settings: EngineSettings) -> LlamaModel:
        """The draft model for speculative decoding: same threads and window, two sequences."""
        assert settings.draft_model is not None  # called only when there is one
        draft = LlamaModel(settings.draft_model, replace(settings, draft_model=None, n_seq_max=2))
        why = vocabulary_mismatch(self, draft)
        if why is not None:
            draft.close()
            raise ValueError(f"draft model {settings.draft_model} does not share the vocabulary of {path} ({why}); "
                             "a draft model must come with the same tokenizer")
        return draft

    def info(self) -> dict[str, Any]:
        return {
            "backend": "llama",
            "llama_cpp_python": L.__version__,
            "llama_cpp": library_build(),
            "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
            "gpu_offload": bool(L.llama_supports_gpu_offload()),
            "n_ctx": self.n_ctx,
            "n_ctx_train": L.llama_model_n_ctx_train(self.model),
            "n_vocab": self.n_vocab,
            "max_outputs_per_decode": self.max_outputs,
            "settings": self.settings.__dict__,
            "tokens": dict(self.counters),
        }

    # --- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.vocabulary.tokenize(text, add_special)

    def piece(self, token: int) -> bytes:
        return self.vocabulary.piece(token)

    def token_text(self, token: int) -> bytes:
        return self.vocabulary.token_text(token)

    def is_end(self, token: int) -> bool:
        return self.vocabulary.is_end(token)

    def split_tokens(self, context: str, continuation: str) -> tuple[list[int], int]:
        return self.vocabulary.split_tokens(context, continuation)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's tokens, the start token included where the model adds one (as `tokenizer.encode`)."""
        return [len(self.vocabulary.tokenize(text)) for text in texts]

    def token_slice(self, text: str, start: int | None, end: int | None) -> str:
        return self.vocabulary.detokenize(self.vocabulary.tokenize(text)[start:end])

    # --- the prefix sequence, as drafting and the speed benchmark drive it ---------------------

    def feed_prompt(self, tokens: list[int]) -> int:
        """Decode `tokens` on the prefix sequence, keeping the cached common prefix (the last token
        is always decoded, for its logits); returns tokens reused."""
        return self.cache.feed_prompt(tokens)

    def logits(self, index: int) -> np.ndarray:
        """A view of output row `index` of the last decode (valid until the next decode)."""
        return self.cache.logits(index)

    def append_tokens(self, tokens: list[int]) -> None:
        """Append tokens to the prefix sequence in one decode; logits for the last."""
        self.cache.append_tokens(tokens)

    def append_every_row(self, tokens: list[int]) -> None:
        """Append tokens to the prefix sequence in one decode keeping every row's logits (how a draft
        is verified)."""
        self.cache.append_every_row(tokens)

    def calibrate(self, n_prompt: int, n_gen: int) -> dict[str, float]:
        """Prompt and generation speed of this model as loaded (repacked or not): `n_prompt` tokens decoded in
        batches as a prompt is, then `n_gen` tokens one per decode as greedy generation does (after a short
        warm-up that pages the weights in). The counters are left as they were."""
        counters = dict(self.counters)
        text = CALIBRATION_TEXT * (1 + 8 * n_prompt // len(CALIBRATION_TEXT))
        tokens = self.vocabulary.tokenize(text)[:n_prompt]
        try:
            self.cache.set_prefix(tokens[:16], decode_last=True)
            self.cache.set_prefix([])
            began = time.perf_counter()
            self.cache.set_prefix(tokens, decode_last=True)
            prompt_seconds = time.perf_counter() - began
            began = time.perf_counter()
            for _ in range(n_gen):
                self.cache.append_tokens([int(np.argmax(self.cache.logits(-1)))])
            gen_seconds = time.perf_counter() - began
            self.cache.set_prefix([])
        finally:
            self.counters.clear()
            self.counters.update(counters)
        return {"prompt_tokens": len(tokens), "prompt_tokens_per_s": len(tokens) / prompt_seconds,
                "generated_tokens": n_gen, "gen_tokens_per_s": n_gen / gen_seconds,
                "chars_per_token": len(self.vocabulary.detokenize(tokens)) / max(1, len(tokens))}

    # --- units of work ---------------------------------------------------------------------------

    def generate(self, prompt: str, max_tokens: int, stop: list[str], ignore_eos: bool = False,
                 speculative: str | None = None) -> Generation:
        return self.generator.generate(prompt, max_tokens, stop, ignore_eos, speculative)

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str],
                      n_parallel: int | None = None, ignore_eos: bool = False,
                      speculative: str | None = None) -> list[Generation]:
        return self.generator.generate_many(prompts, max_tokens, stop, n_parallel, ignore_eos, speculative)

    def letter_logprobs(self, prompt: str, letters: list[str]) -> dict[str, float]:
        return self.scorer.letter_logprobs(prompt, letters)

    def loglikelihood(self, context: str, continuations: list[str]) -> list[OptionScore]:
        return self.loglikelihood_many([(context, continuations)])[0]

    def loglikelihood_many(self, items: list[tuple[str, list[str]]]) -> list[list[OptionScore]]:
        return self.scorer.loglikelihood_many(items)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts)

    def token_embeddings(self, texts: list[str]) -> list[dict[str, Any]]:
        return self.embedder.token_vectors(texts)

    def embedding_tokens(self) -> int:
        """The most tokens of a text that `embed` reads (the rest is cut)."""
        return self.embedder.n_tokens()

    def close(self) -> None:
        for part in ("embedder", "streams", "cache"):
            closing = getattr(self, part, None)
            if closing is not None:
                closing.close()
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None
