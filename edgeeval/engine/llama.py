"""llama.cpp through llama-cpp-python's low-level API: greedy generation, batched generation and
log-likelihood scoring, with the shared prefix of a task decoded once and kept in the KV cache.

The main context holds `n_seq_max` sequences in a unified KV cache. Sequence 0 keeps the prefix:
the tokens of the last prompt (or the common prefix of the last batch of items); every other
sequence is a working sequence that starts as a copy of it (`llama_memory_seq_cp` shares the cells,
it does not copy data) and is removed when its unit is done. Batched generation runs in a second
context, made when first needed, with one cache stream per sequence (see `generate_many`).

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
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import llama_cpp as L
import numpy as np

from edgeeval.engine import EngineError, EngineSettings, Generation, OptionScore
from edgeeval.engine.drafting import Drafter, DraftModel, PromptLookup, vocabulary_mismatch
from edgeeval.types import ErrorKind, FinishReason

_LOG_ERROR = 4
_PREFIX_SEQ = 0
_DEFAULT_PARALLEL = 8
_LOGITS_BUDGET_BYTES = 64 << 20
"""At most this much memory for the logits of one llama_decode: it bounds the rows asked for
per call (64 rows of Gemma 3's 262k vocabulary), which bounds llama.cpp's output buffer too."""


def _library_build() -> dict[str, str]:
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


class LlamaModel:
    """A model and one context. Greedy decoding is argmax over the last position's logits."""

    def __init__(self, path: str, settings: EngineSettings):
        if not os.environ.get("EDGEEVAL_LLAMA_LOG"):
            L.llama_log_set(_quiet_log, ctypes.c_void_p())
        L.llama_backend_init()
        if settings.n_seq_max < 2:
            raise ValueError("n_seq_max must be at least 2 (one sequence keeps the shared prefix)")
        self.settings = settings
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 999
        mparams.use_extra_bufts = bool(settings.use_extra_bufts)
        self.model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.max_outputs = max(settings.n_seq_max, min(settings.n_batch, _LOGITS_BUDGET_BYTES // (4 * self.n_vocab)))
        cparams = L.llama_context_default_params()
        cparams.n_ctx = settings.n_ctx
        cparams.n_batch = settings.n_batch
        cparams.n_ubatch = settings.n_ubatch
        cparams.n_threads = settings.n_threads
        cparams.n_threads_batch = settings.n_threads
        cparams.n_seq_max = settings.n_seq_max
        cparams.n_outputs_max = self.max_outputs
        # One buffer for all sequences, so a prefix copied to the option sequences shares its cells.
        cparams.kv_unified = True
        # Full-size sliding-window caches (Gemma 3): the prefix's cells stay, and a tail can be removed.
        cparams.swa_full = True
        cparams.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn
                                   else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {settings.n_ctx} tokens (try a smaller n_ctx)")
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.n_batch = min(settings.n_batch, self.n_ctx)
        self.memory = L.llama_get_memory(self.ctx)
        self.batch: _Batch | None = _Batch(self.n_batch, settings.n_seq_max)  # None once closed
        self._cached: list[int] = []  # the tokens of the prefix sequence (0) in the cache
        self._working_used = False  # whether any other sequence may hold cells
        # (context, sequences, cells each, outputs) for generate_many, made when needed
        self._streams: tuple[Any, int, int, int] | None = None
        self.counters = {"prompt_tokens": 0, "prompt_tokens_decoded": 0, "generated_tokens": 0,
                         "decode_calls": 0, "decode_seconds": 0.0, "drafted_tokens": 0, "accepted_tokens": 0}
        self.draft = self._load_draft(path, settings) if settings.draft_model else None

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
            "llama_cpp": _library_build(),
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

    def token_text(self, token: int) -> bytes:
        return L.llama_vocab_get_text(self.vocab, token) or b""

    def is_end(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def split_tokens(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Tokens of context+continuation and where the continuation starts (lm-eval's way).

        The two are tokenized together so that a merge across the boundary comes out as the model
        would see it; the split is at the length of the context tokenized alone. Trailing spaces
        of the context belong to the continuation (" B" is one token, "B" after " " is not)."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenize(context + continuation)
        start = min(len(self.tokenize(context)), len(whole))
        return whole, start

    # --- one prompt at a time -----------------------------------------------------------------

    def generate(self, prompt: str, max_tokens: int, stop: list[str], ignore_eos: bool = False,
                 speculative: str | None = None) -> Generation:
        """Greedy answer to one prompt. `ignore_eos` (benchmarks only, as llama-bench does) generates
        past the end-of-turn token, so every run produces max_tokens tokens. `speculative`: 'lookup'
        (drafts copied from the prompt) or 'draft' (drafts from the draft model); None or 'none': one
        token per decode."""
        start = time.perf_counter()
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            return Generation.failed(ErrorKind.PROMPT_TOO_LONG, _too_long(len(tokens), self.n_ctx),
                                     n_prompt_tokens=len(tokens), seconds=time.perf_counter() - start)
        reused = self.feed_prompt(tokens)
        drafter = self._drafter(speculative)
        if drafter is not None:
            slot = self._speculative_loop(tokens, max_tokens, stop, ignore_eos, drafter, start)
            return slot.generation(reused)
        text, n_out, reason = self._decode_loop(len(tokens), max_tokens, stop, ignore_eos)
        return Generation(
            text=text,
            n_prompt_tokens=len(tokens),
            n_output_tokens=n_out,
            finish_reason=reason,
            seconds=time.perf_counter() - start,
            notes={"prefix_tokens_reused": reused},
        )

    def _drafter(self, speculative: str | Drafter | None) -> Drafter | None:
        if speculative in (None, "none"):
            return None
        if not isinstance(speculative, str):
            return speculative  # a drafter object (tests script what is drafted)
        if speculative == "lookup":
            return PromptLookup()
        if speculative == "draft":
            if self.draft is None:
                raise EngineError(ErrorKind.ENGINE, "speculative='draft' needs EngineSettings.draft_model")
            return DraftModel(self.draft)
        raise EngineError(ErrorKind.ENGINE, f"speculative {speculative!r} is not one of none, lookup, draft")

    def _speculative_loop(self, tokens: list[int], max_tokens: int, stop: list[str], ignore_eos: bool,
                          drafter: Drafter, started: float) -> _Slot:
        """Greedy decoding of the prefix sequence with drafts: each step decodes the last accepted
        token and the draft in one batch, takes the model's greedy token at every position while it
        agrees with the draft, and removes the cells of the draft tokens it did not take."""
        slot = _Slot(index=0, seq=_PREFIX_SEQ, tokens=tokens, fed=len(tokens),
                     room=min(max_tokens, self.n_ctx - len(tokens)), started=started,
                     ignore_eos=ignore_eos, drafter=drafter)
        done = slot.accept(int(np.argmax(self.logits(-1))), self, max_tokens, stop)
        while not done:
            draft = slot.propose(self.settings.n_draft, max_tokens)
            base = len(self._cached)
            self.append_every_row([slot.last, *draft])
            taken, done = slot.verify(draft, [self.logits(i) for i in range(len(draft) + 1)], self, max_tokens, stop)
            keep = base + 1 + taken
            if keep < len(self._cached):
                L.llama_memory_seq_rm(self.memory, _PREFIX_SEQ, keep, -1)
                self._cached = self._cached[:keep]
        self.counters["generated_tokens"] += slot.n_out
        self._count_drafts(slot)
        return slot

    def _count_drafts(self, slot: _Slot) -> None:
        self.counters["drafted_tokens"] += slot.drafted
        self.counters["accepted_tokens"] += slot.accepted

    def letter_logprobs(self, prompt: str, letters: list[str]) -> dict[str, float]:
        """Log-probability of each letter as the next token: one pass over the prompt (its prefix
        reused from the cache) and one row of logits. Letters must be single tokens after it."""
        splits = [self.split_tokens(prompt, letter) for letter in letters]
        context = splits[0][0][: splits[0][1]] if splits else self.tokenize(prompt)
        letter_tokens = []
        for letter, (whole, start) in zip(letters, splits):
            if whole[:start] != context or len(whole) - start != 1:
                raise EngineError(ErrorKind.NOT_SINGLE_TOKEN, f"{letter!r} is not one token after this prompt; "
                                  "score the options with loglikelihood instead")
            letter_tokens.append(whole[start])
        if not context:
            raise EngineError(ErrorKind.EMPTY_CONTEXT, "nothing to condition the letters on")
        if len(context) >= self.n_ctx:
            raise EngineError(ErrorKind.PROMPT_TOO_LONG, _too_long(len(context), self.n_ctx))
        self.feed_prompt(context)
        logprobs, _ = _log_softmax_at(self.logits(-1), letter_tokens)
        return {letter: float(lp) for letter, lp in zip(letters, logprobs)}

    def feed_prompt(self, tokens: list[int]) -> int:
        """Decode the prompt on the prefix sequence, keeping the longest prefix already in the
        cache (the last token is always decoded, for its logits); returns tokens reused."""
        self._drop_working_sequences()
        keep = self._trim_prefix(tokens, len(tokens) - 1)
        for begin in range(keep, len(tokens), self.n_batch):
            self.append_tokens(tokens[begin : begin + self.n_batch])
        self.counters["prompt_tokens"] += len(tokens)
        self.counters["prompt_tokens_decoded"] += len(tokens) - keep
        return keep

    def _set_prefix(self, tokens: list[int]) -> int:
        """Make the prefix sequence hold exactly `tokens`; returns how many were already there."""
        self._drop_working_sequences()
        keep = self._trim_prefix(tokens, len(tokens))
        for begin in range(keep, len(tokens), self.n_batch):
            self.append_tokens(tokens[begin : begin + self.n_batch])
        return keep

    def _trim_prefix(self, tokens: list[int], limit: int) -> int:
        """Cut the prefix sequence back to its common prefix with `tokens` (at most `limit`)."""
        keep = min(_common_prefix(self._cached, tokens), limit)
        if keep < len(self._cached) and not L.llama_memory_seq_rm(self.memory, _PREFIX_SEQ, keep, -1):
            # A cache that cannot drop a tail (sliding window without swa_full): start clean.
            L.llama_memory_clear(self.memory, True)
            keep = 0
        self._cached = self._cached[:keep]
        return keep

    def append_tokens(self, tokens: list[int]) -> None:
        """Append tokens to the prefix sequence; logits are kept for the last one."""
        arr = (L.llama_token * len(tokens))(*tokens)
        self._llama_decode(L.llama_batch_get_one(arr, len(tokens)), len(tokens))
        self._cached.extend(tokens)

    def append_every_row(self, tokens: list[int]) -> None:
        """Append tokens to the prefix sequence in one decode, keeping the logits of every one (`logits(i)`):
        how a draft is verified."""
        batch = self.batch
        assert batch is not None, "model closed"
        batch.clear()
        batch.add(tokens, len(self._cached), [_PREFIX_SEQ])
        for index in range(len(tokens)):
            batch.want_logits(index)
        self._llama_decode(batch.raw_for_decode(), batch.n)
        self._cached.extend(tokens)

    def _llama_decode(self, batch: Any, n_tokens: int) -> None:
        try:
            self._decode_on(self.ctx, batch, n_tokens)
        except RuntimeError:
            # The cache no longer matches what we think is in it.
            L.llama_memory_clear(self.memory, True)
            self._cached = []
            raise

    def _decode_on(self, ctx: Any, batch: Any, n_tokens: int) -> None:
        begin = time.perf_counter()
        rc = L.llama_decode(ctx, batch)
        self.counters["decode_seconds"] += time.perf_counter() - begin
        self.counters["decode_calls"] += 1
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc} on a batch of {n_tokens} tokens")

    def logits(self, index: int) -> np.ndarray:
        return self._row_of(self.ctx, index)

    def _row_of(self, ctx: Any, index: int) -> np.ndarray:
        """The logits of output `index` of the last decode (a view, valid until the next decode)."""
        ptr = L.llama_get_logits_ith(ctx, index)
        if not ptr:
            raise RuntimeError(f"llama.cpp returned no logits for output {index}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _decode_loop(self, n_prompt: int, max_tokens: int, stop: list[str],
                     ignore_eos: bool = False) -> tuple[str, int, FinishReason]:
        out = bytearray()
        n_out = 0
        room = self.n_ctx - n_prompt
        while True:
            token = int(np.argmax(self.logits(-1)))
            if not ignore_eos and L.llama_vocab_is_eog(self.vocab, token):
                return out.decode("utf-8", errors="replace"), n_out, "stop"
            out += self.piece(token)
            n_out += 1
            self.counters["generated_tokens"] += 1
            text = out.decode("utf-8", errors="ignore")
            cut = _first_stop(text, stop)
            if cut is not None:
                return text[:cut], n_out, "stop"
            if n_out >= max_tokens:
                return out.decode("utf-8", errors="replace"), n_out, "length"
            if n_out >= room:
                return out.decode("utf-8", errors="replace"), n_out, "context"
            self.append_tokens([token])

    def _drop_working_sequences(self) -> None:
        if self._working_used:
            for seq in range(1, self.settings.n_seq_max):
                L.llama_memory_seq_rm(self.memory, seq, -1, -1)
            self._working_used = False

    # --- log-likelihood -----------------------------------------------------------------------

    def loglikelihood(self, context: str, continuations: list[str]) -> list[OptionScore]:
        return self.loglikelihood_many([(context, continuations)])[0]

    def loglikelihood_many(self, items: list[tuple[str, list[str]]]) -> list[list[OptionScore]]:
        """Score every continuation of every item: the items' common prefix is decoded once on the
        prefix sequence (and kept for the next call); each item's own context once, tagged with the
        sequences of all its options; each option's tokens on its own sequence. Items stream through
        batches of up to n_batch tokens, and only the rows that predict a continuation token are
        asked for."""
        plans = [self._plan(context, continuations) for context, continuations in items]
        good = [plan for plan in plans if plan.failed is None]
        if good:
            prefix = _common_prefix_all([option for plan in good for option in plan.options])
            prefix = prefix[: max(0, min(plan.shared_end for plan in good) - 1)]
            for plan in good:
                if len(prefix) + plan.cost(len(prefix)) > self.n_ctx:
                    plan.fail(ErrorKind.PROMPT_TOO_LONG, _too_long(len(prefix) + plan.cost(len(prefix)), self.n_ctx))
            self._score(prefix, [plan for plan in good if plan.failed is None])
        return [plan.results() for plan in plans]

    def _plan(self, context: str, continuations: list[str]) -> _ItemPlan:
        plan = _ItemPlan(n_options=len(continuations))
        if not continuations:
            plan.fail(ErrorKind.NO_OPTIONS, "an item needs at least one continuation")
        elif len(continuations) > self.settings.n_seq_max - 1:
            plan.fail(ErrorKind.TOO_MANY_OPTIONS, f"{len(continuations)} options need n_seq_max >= "
                                                  f"{len(continuations) + 1} (it is {self.settings.n_seq_max})")
        if plan.failed is not None:
            return plan
        for continuation in continuations:
            whole, start = self.split_tokens(context, continuation)
            if start == len(whole):
                plan.fail(ErrorKind.EMPTY_CONTINUATION, f"{continuation!r} has no tokens")
            elif start == 0:
                plan.fail(ErrorKind.EMPTY_CONTEXT, "nothing to condition the options on")
            plan.options.append(whole)
            plan.starts.append(start)
        if plan.failed is None:
            plan.shared_end = min(len(_common_prefix_all(plan.options)), min(plan.starts))
            longest = max(len(option) for option in plan.options)
            if longest > self.n_ctx:
                plan.fail(ErrorKind.PROMPT_TOO_LONG, _too_long(longest, self.n_ctx))
        return plan

    def _score(self, prefix: list[int], plans: list[_ItemPlan]) -> None:
        reused = self._set_prefix(prefix)
        self.counters["prompt_tokens_decoded"] += len(prefix) - reused
        free_seqs = list(range(self.settings.n_seq_max - 1, 0, -1))
        waiting = deque(plans)
        runs: deque[_Run] = deque()
        active: list[_ItemPlan] = []
        cells_free = self.n_ctx - len(prefix)
        try:
            while waiting or runs:
                # Admit items only as far as the next batch needs tokens: fewer cells in use means
                # less attention work (a unified cache attends over every used cell, masked).
                while waiting and sum(run.remaining for run in runs) < self.n_batch:
                    plan = waiting[0]
                    cost = plan.cost(len(prefix))
                    if len(free_seqs) < plan.n_options or cost > cells_free:
                        if not active:
                            raise RuntimeError("an item does not fit an empty cache")  # checked in _plan
                        break
                    waiting.popleft()
                    seqs = [free_seqs.pop() for _ in range(plan.n_options)]
                    self._working_used = True
                    for seq in seqs:
                        L.llama_memory_seq_cp(self.memory, _PREFIX_SEQ, seq, -1, -1)
                    runs.extend(plan.runs(len(prefix), seqs))
                    cells_free -= cost
                    active.append(plan)
                    self.counters["prompt_tokens"] += sum(len(option) for option in plan.options)
                    self.counters["prompt_tokens_decoded"] += cost
                self._decode_runs(runs)
                for plan in [plan for plan in active if plan.pending == 0]:
                    active.remove(plan)
                    for seq in plan.seqs:
                        L.llama_memory_seq_rm(self.memory, seq, -1, -1)
                        free_seqs.append(seq)
                    cells_free += plan.cost(len(prefix))
        finally:
            self._drop_working_sequences()

    def _decode_runs(self, runs: deque[_Run]) -> None:
        """Fill one batch from the front of the runs, decode it, hand each output row to its run."""
        batch = self.batch
        assert batch is not None, "model closed"
        batch.clear()
        outputs: list[tuple[int, _Run, int]] = []
        while runs and batch.n < batch.capacity:
            run = runs[0]
            room = batch.capacity - batch.n
            room_outputs = self.max_outputs - len(outputs)
            take = run.take(room, room_outputs)
            if take == 0:
                break
            first = batch.add(run.tokens[run.done : run.done + take], run.pos0 + run.done, run.seqs)
            for offset in run.outputs_between(run.done, run.done + take):
                batch.want_logits(first + offset - run.done)
                outputs.append((first + offset - run.done, run, offset))
            run.advance(take)
            if run.remaining == 0:
                runs.popleft()
        self._llama_decode(batch.raw_for_decode(), batch.n)
        for index, run, offset in outputs:
            run.consume(offset, self.logits(index))

    # --- batched generation -------------------------------------------------------------------

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str],
                      n_parallel: int | None = None, ignore_eos: bool = False,
                      speculative: str | None = None) -> list[Generation]:
        """Greedy answers to several prompts decoded together, one sequence each, one batch per step;
        a finished sequence's slot goes to the next prompt in the queue (continuous batching).

        The sequences live in a second context whose cache has one stream per sequence: in the
        unified cache every token would attend over every sequence's cells (masked), which costs
        more than the weights at 16 sequences. With one sequence it is `generate`, prompt by prompt.
        `n_parallel` defaults to 8: on a CPU the gain flattens by then, and each sequence holds its
        own cache (its prompt plus max_tokens cells). With `speculative='lookup'` every sequence adds
        its draft to the batch; a draft model drafts for one sequence at a time, so with 'draft' the
        prompts are answered one after the other."""
        wanted = _DEFAULT_PARALLEL if n_parallel is None else n_parallel
        n_parallel = max(1, min(wanted, self.settings.n_seq_max))
        tokens = [self.tokenize(prompt) for prompt in prompts]
        results: list[Generation | None] = [None] * len(prompts)
        for i, toks in enumerate(tokens):
            if len(toks) >= self.n_ctx:
                results[i] = Generation.failed(ErrorKind.PROMPT_TOO_LONG, _too_long(len(toks), self.n_ctx),
                                               n_prompt_tokens=len(toks))
            elif not toks:
                results[i] = Generation.failed(ErrorKind.EMPTY_PROMPT, "nothing to generate from", n_prompt_tokens=0)
        todo = [i for i in range(len(prompts)) if results[i] is None]
        n_parallel = min(n_parallel, len(todo))
        if n_parallel <= 1 or speculative == "draft":
            for i in todo:
                results[i] = self.generate(prompts[i], max_tokens, stop, ignore_eos, speculative)
            return results  # type: ignore[return-value]
        self._drafter(speculative)  # an unknown method fails here, before any work
        per_seq = max(len(tokens[i]) + min(max_tokens, self.n_ctx - len(tokens[i])) for i in todo)
        drafting = speculative not in (None, "none")
        outputs = n_parallel * (1 + self.settings.n_draft) if drafting else n_parallel
        streams = self._streams_context(n_parallel, per_seq, min(outputs, self.n_batch))
        try:
            self._generate_stream(streams, tokens, todo, results, max_tokens, stop, n_parallel, ignore_eos,
                                  speculative)
        finally:
            L.llama_memory_clear(L.llama_get_memory(streams), False)
        return results  # type: ignore[return-value]

    def _streams_context(self, n_seq: int, per_seq: int, n_outputs: int) -> Any:
        """The context for batched generation: n_seq sequences of per_seq cells each, at most n_outputs
        rows of logits per decode, kept for the next call while it is big enough."""
        per_seq = -(-per_seq // 256) * 256
        have = self._streams
        if have is not None and have[1] >= n_seq and have[2] >= per_seq and have[3] >= n_outputs:
            return have[0]
        if have is not None:
            L.llama_free(have[0])
            self._streams = None
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_seq * per_seq
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = min(self.settings.n_ubatch, self.n_batch)
        cparams.n_threads = cparams.n_threads_batch = self.settings.n_threads
        cparams.n_seq_max = n_seq
        cparams.n_outputs_max = n_outputs
        cparams.kv_unified = False
        cparams.swa_full = True  # as in the main context, so the numbers match one at a time
        cparams.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.settings.flash_attn
                                   else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.no_perf = True
        ctx = L.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n_seq} sequences of {per_seq} tokens")
        self._streams = (ctx, n_seq, per_seq, n_outputs)
        return ctx

    def _generate_stream(self, ctx: Any, tokens: list[list[int]], todo: list[int], results: list[Generation | None],
                         max_tokens: int, stop: list[str], n_parallel: int, ignore_eos: bool,
                         speculative: str | None = None) -> None:
        memory = L.llama_get_memory(ctx)
        free_seqs = list(range(n_parallel - 1, -1, -1))
        waiting = deque(todo)
        active: list[_Slot] = []
        while waiting or active:
            while waiting and free_seqs:
                index = waiting.popleft()
                toks = tokens[index]
                slot = _Slot(index=index, seq=free_seqs.pop(), tokens=toks, fed=0,
                             room=min(max_tokens, self.n_ctx - len(toks)), started=time.perf_counter(),
                             ignore_eos=ignore_eos, drafter=self._drafter(speculative))
                active.append(slot)
                self.counters["prompt_tokens"] += len(toks)
                self.counters["prompt_tokens_decoded"] += len(toks)
            outputs = self._fill_generation_batch(active, max_tokens)
            assert self.batch is not None, "model closed"
            self._decode_on(ctx, self.batch.raw_for_decode(), self.batch.n)
            for index, slot, draft in outputs:
                rows = [self._row_of(ctx, index + i) for i in range(len(draft) + 1)]
                taken, done = slot.verify(draft, rows, self, max_tokens, stop)
                if done:
                    active.remove(slot)
                    L.llama_memory_seq_rm(memory, slot.seq, -1, -1)
                    free_seqs.append(slot.seq)
                    self.counters["generated_tokens"] += slot.n_out
                    self._count_drafts(slot)
                    results[slot.index] = slot.generation(0)
                elif taken < len(draft):
                    # The cells of the draft tokens not taken; the last token taken is decoded next step.
                    L.llama_memory_seq_rm(memory, slot.seq, len(slot.tokens) + slot.n_out - 1, -1)

    def _fill_generation_batch(self, active: list[_Slot], max_tokens: int) -> list[tuple[int, _Slot, list[int]]]:
        """For each sequence that is generating, its last token and its draft (if any), then prompt
        chunks for those still reading their prompt, up to n_batch tokens. Returns (first output row,
        sequence, draft) per sequence with outputs: rows first .. first + len(draft)."""
        batch = self.batch
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

    # --- embeddings (retrieval) -------------------------------------------------------------------

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text: the mean over its tokens of the model's last hidden state
        (llama.cpp's MEAN pooling), each text cut to its first `embedding_tokens()` tokens. Texts are
        decoded several at a time, each as its own sequence, in a context of their own."""
        ctx, batch, n_tokens = self._embedding_context()
        n_embd = L.llama_model_n_embd(self.model)
        vectors: list[list[float]] = []
        pending = [self.tokenize(text)[:n_tokens] or [L.llama_vocab_bos(self.vocab)] for text in texts]
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
            t0 = time.perf_counter()
            status = L.llama_decode(ctx, batch.raw_for_decode())
            self.counters["decode_seconds"] += time.perf_counter() - t0
            self.counters["decode_calls"] += 1
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

    def embedding_tokens(self) -> int:
        """The most tokens of a text that `embed` reads (the rest is cut)."""
        return min(self.settings.n_ctx, self.settings.n_batch)

    def _embedding_context(self) -> tuple[Any, "_Batch", int]:
        """A context made for embeddings (MEAN pooling, every token an output), once per model: the
        sequences of one decode share its cells and each lies whole in one micro-batch."""
        made: tuple[Any, _Batch, int] | None = getattr(self, "_embedding", None)
        if made is None:
            n_tokens = self.embedding_tokens()
            n_seq = min(16, max(1, self.settings.n_seq_max))
            params = L.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = n_tokens
            params.n_seq_max = n_seq
            params.n_outputs_max = n_tokens
            params.n_threads = params.n_threads_batch = self.settings.n_threads
            params.embeddings = True
            params.pooling_type = L.LLAMA_POOLING_TYPE_MEAN
            params.kv_unified = True
            params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            params.no_perf = True
            ctx = L.llama_init_from_model(self.model, params)
            if not ctx:
                raise EngineError(ErrorKind.ENGINE, f"llama.cpp could not create an embedding context of {n_tokens} tokens")
            batch = _Batch(n_tokens, n_seq)
            made = (ctx, batch, n_tokens)
            self._embedding: tuple[Any, _Batch, int] | None = made
        return made

    def close(self) -> None:
        embedding = getattr(self, "_embedding", None)
        if embedding is not None:
            L.llama_free(embedding[0])
            embedding[1].free()
            self._embedding = None
        streams = getattr(self, "_streams", None)
        if streams is not None:
            L.llama_free(streams[0])
            self._streams = None
        batch = getattr(self, "batch", None)
        if batch is not None:
            batch.free()
            self.batch = None
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None


class _Batch:
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


@dataclass
class _Run:
    """Tokens that go into the same sequences at consecutive positions (an item's own context,
    or one option's tokens), with the positions whose logits score a continuation token."""

    tokens: list[int]
    pos0: int
    seqs: list[int]
    wants: dict[int, list[tuple[int, int]]]
    """offset in the run -> [(option, index of the token it predicts)]"""
    plan: _ItemPlan
    done: int = 0

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.done

    def take(self, room: int, room_outputs: int) -> int:
        """How many of the next tokens fit in `room` tokens and `room_outputs` rows of logits."""
        take = min(room, self.remaining)
        wanted = [offset for offset in self.wants if self.done <= offset < self.done + take]
        if len(wanted) > room_outputs:
            wanted.sort()
            take = wanted[room_outputs] - self.done
        return take

    def outputs_between(self, begin: int, end: int) -> list[int]:
        return sorted(offset for offset in self.wants if begin <= offset < end)

    def advance(self, n: int) -> None:
        self.done += n
        self.plan.pending -= n

    def consume(self, offset: int, row: np.ndarray) -> None:
        wants = self.wants[offset]
        targets = [self.plan.options[option][index] for option, index in wants]
        logprobs, greedy = _log_softmax_at(row, targets)
        for (option, index), logprob, is_greedy in zip(wants, logprobs, greedy):
            self.plan.logprobs[option][index - self.plan.starts[option]] = float(logprob)
            self.plan.greedy[option][index - self.plan.starts[option]] = bool(is_greedy)


@dataclass
class _ItemPlan:
    """One (context, continuations) item: its token sequences, what to decode, and its scores."""

    n_options: int
    options: list[list[int]] = field(default_factory=list)
    """Per option: the tokens of context + continuation."""
    starts: list[int] = field(default_factory=list)
    """Per option: the index of its first continuation token."""
    shared_end: int = 0
    """Tokens [0, shared_end) are the same in every option and none of them is scored."""
    failed: OptionScore | None = None
    """Why the item cannot be scored: the failed score every option gets."""
    seqs: list[int] = field(default_factory=list)
    pending: int = 0
    logprobs: list[list[float]] = field(default_factory=list)
    greedy: list[list[bool]] = field(default_factory=list)

    def cost(self, prefix_len: int) -> int:
        """Tokens it decodes (cells it needs) beyond a shared prefix of `prefix_len` tokens."""
        return self.shared_end - prefix_len + sum(len(option) - 1 - self.shared_end for option in self.options)

    def runs(self, prefix_len: int, seqs: list[int]) -> list[_Run]:
        """The shared part once, tagged with every option's sequence, then each option's own tokens.
        The last token of an option is never decoded: nothing follows it."""
        self.seqs = seqs
        self.logprobs = [[0.0] * (len(o) - s) for o, s in zip(self.options, self.starts)]
        self.greedy = [[False] * (len(o) - s) for o, s in zip(self.options, self.starts)]
        end = self.shared_end
        shared_wants = [(i, end) for i, start in enumerate(self.starts) if start == end]
        runs = [_Run(self.options[0][prefix_len:end], prefix_len, seqs,
                     {end - 1 - prefix_len: shared_wants} if shared_wants else {}, self)]
        for i, (option, start) in enumerate(zip(self.options, self.starts)):
            wants = {pos - end: [(i, pos + 1)] for pos in range(max(end, start - 1), len(option) - 1)}
            runs.append(_Run(option[end : len(option) - 1], end, [seqs[i]], wants, self))
        runs = [run for run in runs if run.tokens]
        self.pending = sum(len(run.tokens) for run in runs)
        return runs

    def fail(self, kind: ErrorKind, detail: str) -> None:
        self.failed = OptionScore.failed(kind, detail)

    def results(self) -> list[OptionScore]:
        if self.failed is not None:
            return [self.failed] * self.n_options
        return [OptionScore.scored(logprobs, greedy, start)
                for logprobs, greedy, start in zip(self.logprobs, self.greedy, self.starts)]


@dataclass
class _Slot:
    """One prompt being answered by generate_many."""

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

    def accept(self, token: int, model: LlamaModel, max_tokens: int, stop: list[str]) -> bool:
        """Take the next greedy token; returns whether the answer is complete (`reason` says why)."""
        if not self.ignore_eos and L.llama_vocab_is_eog(model.vocab, token):
            self.text, self.reason = self.out.decode("utf-8", errors="replace"), "stop"
            return True
        self.out += model.piece(token)
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

    def verify(self, draft: list[int], rows: list[np.ndarray], model: LlamaModel, max_tokens: int,
               stop: list[str]) -> tuple[int, bool]:
        """Take the greedy token of each row (row i follows draft[i-1]) while the previous one agreed
        with the draft. Returns (draft tokens taken, so whose cells stay; whether the answer is complete)."""
        for i, row in enumerate(rows):
            token = int(np.argmax(row))
            if self.accept(token, model, max_tokens, stop):
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

    def generation(self, reused: int) -> Generation:
        notes: dict[str, Any] = {"prefix_tokens_reused": reused}
        if self.drafter is not None:
            notes["speculative"] = {"method": self.drafter.name, "drafted": self.drafted, "accepted": self.accepted}
        return Generation(text=self.text, n_prompt_tokens=len(self.tokens), n_output_tokens=self.n_out,
                          finish_reason=self.reason, seconds=time.perf_counter() - self.started, notes=notes)


_scratch: dict[int, np.ndarray] = {}


def _log_softmax_at(row: np.ndarray, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """log p(target) under softmax(row), and whether each target is the argmax, for one row."""
    work = _scratch.get(row.size)
    if work is None:
        work = _scratch[row.size] = np.empty(row.size, dtype=np.float32)
    top = float(row.max())
    np.subtract(row, np.float32(top), out=work)
    np.exp(work, out=work)
    lse = top + float(np.log(work.sum(dtype=np.float64)))
    picked = row[targets].astype(np.float64)
    return picked - lse, picked >= top


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_prefix_all(seqs: list[list[int]]) -> list[int]:
    if not seqs:
        return []
    first = seqs[0]
    n = len(first)
    for seq in seqs[1:]:
        n = min(n, _common_prefix(first[:n], seq))
    return first[:n]


def _too_long(n_tokens: int, n_ctx: int) -> str:
    return f"{n_tokens} prompt tokens do not fit the {n_ctx}-token context window"


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
