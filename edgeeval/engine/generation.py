"""Greedy generation: one prompt on the prefix sequence (token by token, or with drafts checked in one
decode), several prompts together in the streams context (engine/streams.py)."""

from __future__ import annotations

import time

import numpy as np

from edgeeval.engine import EngineError, Generation
from edgeeval.engine.drafting import Drafter, DraftModel, DraftTarget, PromptLookup
from edgeeval.engine.prefix_cache import PREFIX_SEQ, PrefixCache
from edgeeval.engine.slot import Slot
from edgeeval.engine.streams import Streams
from edgeeval.engine.tokens import Vocabulary, too_long
from edgeeval.types import ErrorKind

DEFAULT_PARALLEL = 8


class Generator:
    """Answers prompts greedily with a model's prefix cache, its streams context and its draft model."""

    def __init__(self, vocabulary: Vocabulary, cache: PrefixCache, streams: Streams, draft: DraftTarget | None):
        self.vocabulary = vocabulary
        self.cache = cache
        self.streams = streams
        self.draft = draft
        self.settings = cache.settings
        self.counters = cache.counters

    def generate(self, prompt: str, max_tokens: int, stop: list[str], ignore_eos: bool = False,
                 speculative: str | Drafter | None = None) -> Generation:
        """Greedy answer to one prompt. `ignore_eos` (benchmarks only, as llama-bench does) generates
        past the end-of-turn token, so every run produces max_tokens tokens. `speculative`: 'lookup'
        (drafts copied from the prompt) or 'draft' (drafts from the draft model); None or 'none': one
        token per decode."""
        start = time.perf_counter()
        tokens = self.vocabulary.tokenize(prompt)
        n_ctx = self.cache.n_ctx
        if len(tokens) >= n_ctx:
            return Generation.failed(ErrorKind.PROMPT_TOO_LONG, too_long(len(tokens), n_ctx),
                                     n_prompt_tokens=len(tokens), seconds=time.perf_counter() - start)
        reused = self.cache.feed_prompt(tokens)
        drafter = self.drafter(speculative)
        if drafter is not None:
            slot = self.speculative_loop(tokens, max_tokens, stop, ignore_eos, drafter, start)
        else:
            slot = self._plain_loop(tokens, max_tokens, stop, ignore_eos, start)
        return slot.generation(reused)

    def drafter(self, speculative: str | Drafter | None) -> Drafter | None:
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

    def _slot(self, tokens: list[int], max_tokens: int, ignore_eos: bool, drafter: Drafter | None,
              started: float) -> Slot:
        """The answer to a prompt already fed to the prefix sequence."""
        return Slot(index=0, seq=PREFIX_SEQ, tokens=tokens, fed=len(tokens),
                    room=min(max_tokens, self.cache.n_ctx - len(tokens)), started=started,
                    ignore_eos=ignore_eos, drafter=drafter)

    def _plain_loop(self, tokens: list[int], max_tokens: int, stop: list[str], ignore_eos: bool,
                    started: float) -> Slot:
        """Greedy decoding of the prefix sequence, one token per decode."""
        slot = self._slot(tokens, max_tokens, ignore_eos, None, started)
        while True:
            before = slot.n_out
            done = slot.accept(int(np.argmax(self.cache.logits(-1))), self.vocabulary, max_tokens, stop)
            self.counters["generated_tokens"] += slot.n_out - before
            if done:
                return slot
            self.cache.append_tokens([slot.last])

    def speculative_loop(self, tokens: list[int], max_tokens: int, stop: list[str], ignore_eos: bool,
                         drafter: Drafter, started: float) -> Slot:
        """Greedy decoding of the prefix sequence with drafts: each step decodes the last accepted
        token and the draft in one batch, takes the model's greedy token at every position while it
        agrees with the draft, and removes the cells of the draft tokens it did not take."""
        cache = self.cache
        slot = self._slot(tokens, max_tokens, ignore_eos, drafter, started)
        done = slot.accept(int(np.argmax(cache.logits(-1))), self.vocabulary, max_tokens, stop)
        while not done:
            draft = slot.propose(self.settings.n_draft, max_tokens)
            base = len(cache.tokens)
            cache.append_every_row([slot.last, *draft])
            rows = [cache.logits(i) for i in range(len(draft) + 1)]
            taken, done = slot.verify(draft, rows, self.vocabulary, max_tokens, stop)
            cache.truncate(base + 1 + taken)
        slot.count(self.counters)
        return slot

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str],
                      n_parallel: int | None = None, ignore_eos: bool = False,
                      speculative: str | None = None) -> list[Generation]:
        """Greedy answers to several prompts decoded together, one sequence each, one batch per step;
        a finished sequence's slot goes to the next prompt in the queue (continuous batching).

        The sequences live in a second context whose cache has one stream per sequence (see
        engine/streams.py). With one sequence it is `generate`, prompt by prompt.
        `n_parallel` defaults to 8: on a CPU the gain flattens by then, and each sequence holds its
        own cache (its prompt plus max_tokens cells). With `speculative='lookup'` every sequence adds
        its draft to the batch; a draft model drafts for one sequence at a time, so with 'draft' the
        prompts are answered one after the other."""
        wanted = DEFAULT_PARALLEL if n_parallel is None else n_parallel
        n_parallel = max(1, min(wanted, self.settings.n_seq_max))
        n_ctx = self.cache.n_ctx
        tokens = [self.vocabulary.tokenize(prompt) for prompt in prompts]
        results: list[Generation | None] = [None] * len(prompts)
        for i, toks in enumerate(tokens):
            if len(toks) >= n_ctx:
                results[i] = Generation.failed(ErrorKind.PROMPT_TOO_LONG, too_long(len(toks), n_ctx),
                                               n_prompt_tokens=len(toks))
            elif not toks:
                results[i] = Generation.failed(ErrorKind.EMPTY_PROMPT, "nothing to generate from", n_prompt_tokens=0)
        todo = [i for i in range(len(prompts)) if results[i] is None]
        n_parallel = min(n_parallel, len(todo))
        if n_parallel <= 1 or speculative == "draft":
            for i in todo:
                results[i] = self.generate(prompts[i], max_tokens, stop, ignore_eos, speculative)
            return results  # type: ignore[return-value]
        self.drafter(speculative)  # an unknown method fails here, before any work
        per_seq = max(len(tokens[i]) + min(max_tokens, n_ctx - len(tokens[i])) for i in todo)
        drafting = speculative not in (None, "none")
        outputs = n_parallel * (1 + self.settings.n_draft) if drafting else n_parallel
        self.streams.generate(tokens, todo, results, max_tokens, stop, n_parallel, per_seq,
                              min(outputs, self.cache.n_batch), ignore_eos, lambda: self.drafter(speculative))
        return results  # type: ignore[return-value]
