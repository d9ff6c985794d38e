"""Log-likelihood scoring on the prefix cache: the options of many items packed into shared batches,
and the letter fast path (one row of logits after the prompt)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgeeval.engine import EngineError, OptionScore
from edgeeval.engine.prefix_cache import PrefixCache
from edgeeval.engine.sharing import common_prefix_all
from edgeeval.engine.tokens import Vocabulary, too_long
from edgeeval.types import ErrorKind


class LoglikScorer:
    """Scores continuations on a model's prefix cache."""

    def __init__(self, vocabulary: Vocabulary, cache: PrefixCache):
        self.vocabulary = vocabulary
        self.cache = cache
        self.counters = cache.counters

    def letter_logprobs(self, prompt: str, letters: list[str]) -> dict[str, float]:
        """Log-probability of each letter as the next token: one pass over the prompt (its prefix
        reused from the cache) and one row of logits. Letters must be single tokens after it."""
        splits = [self.vocabulary.split_tokens(prompt, letter) for letter in letters]
        context = splits[0][0][: splits[0][1]] if splits else self.vocabulary.tokenize(prompt)
        letter_tokens = []
        for letter, (whole, start) in zip(letters, splits):
            if whole[:start] != context or len(whole) - start != 1:
                raise EngineError(ErrorKind.NOT_SINGLE_TOKEN, f"{letter!r} is not one token after this prompt; "
                                  "score the options with loglikelihood instead")
            letter_tokens.append(whole[start])
        if not context:
            raise EngineError(ErrorKind.EMPTY_CONTEXT, "nothing to condition the letters on")
        if len(context) >= self.cache.n_ctx:
            raise EngineError(ErrorKind.PROMPT_TOO_LONG, too_long(len(context), self.cache.n_ctx))
        self.cache.feed_prompt(context)
        logprobs, _ = _log_softmax_at(self.cache.logits(-1), letter_tokens)
        return {letter: float(lp) for letter, lp in zip(letters, logprobs)}

    def loglikelihood_many(self, items: list[tuple[str, list[str]]]) -> list[list[OptionScore]]:
        """Score every continuation of every item: the items' common prefix is decoded once on the
        prefix sequence (and kept for the next call); each item's own context once, tagged with the
        sequences of all its options; each option's tokens on its own sequence. Items stream through
        batches of up to n_batch tokens, and only the rows that predict a continuation token are
        asked for."""
        plans = [self._plan(context, continuations) for context, continuations in items]
        good = [plan for plan in plans if plan.failed is None]
        if good:
            n_ctx = self.cache.n_ctx
            prefix = common_prefix_all([option for plan in good for option in plan.options])
            prefix = prefix[: max(0, min(plan.shared_end for plan in good) - 1)]
            for plan in good:
                if len(prefix) + plan.cost(len(prefix)) > n_ctx:
                    plan.fail(ErrorKind.PROMPT_TOO_LONG, too_long(len(prefix) + plan.cost(len(prefix)), n_ctx))
            self._score(prefix, [plan for plan in good if plan.failed is None])
        return [plan.results() for plan in plans]

    def _plan(self, context: str, continuations: list[str]) -> ItemPlan:
        plan = ItemPlan(n_options=len(continuations))
        if not continuations:
            plan.fail(ErrorKind.NO_OPTIONS, "an item needs at least one continuation")
        elif len(continuations) > self.cache.settings.n_seq_max - 1:
            plan.fail(ErrorKind.TOO_MANY_OPTIONS, f"{len(continuations)} options need n_seq_max >= "
                                                  f"{len(continuations) + 1} (it is {self.cache.settings.n_seq_max})")
        if plan.failed is not None:
            return plan
        for continuation in continuations:
            whole, start = self.vocabulary.split_tokens(context, continuation)
            if start == len(whole):
                plan.fail(ErrorKind.EMPTY_CONTINUATION, f"{continuation!r} has no tokens")
            elif start == 0:
                plan.fail(ErrorKind.EMPTY_CONTEXT, "nothing to condition the options on")
            plan.options.append(whole)
            plan.starts.append(start)
        if plan.failed is None:
            plan.shared_end = min(len(common_prefix_all(plan.options)), min(plan.starts))
            longest = max(len(option) for option in plan.options)
            if longest > self.cache.n_ctx:
                plan.fail(ErrorKind.PROMPT_TOO_LONG, too_long(longest, self.cache.n_ctx))
        return plan

    def _score(self, prefix: list[int], plans: list[ItemPlan]) -> None:
        cache = self.cache
        reused = cache.set_prefix(prefix)
        self.counters["prompt_tokens_decoded"] += len(prefix) - reused
        free_seqs = list(range(self.cache.settings.n_seq_max - 1, 0, -1))
        waiting = deque(plans)
        runs: deque[Run] = deque()
        active: list[ItemPlan] = []
        cells_free = cache.n_ctx - len(prefix)
        try:
            while waiting or runs:
                # Admit items only as far as the next batch needs tokens: fewer cells in use means
                # less attention work (a unified cache attends over every used cell, masked).
                while waiting and sum(run.remaining for run in runs) < cache.n_batch:
                    plan = waiting[0]
                    cost = plan.cost(len(prefix))
                    if len(free_seqs) < plan.n_options or cost > cells_free:
                        if not active:
                            raise RuntimeError("an item does not fit an empty cache")  # checked in _plan
                        break
                    waiting.popleft()
                    seqs = [free_seqs.pop() for _ in range(plan.n_options)]
                    for seq in seqs:
                        cache.share_prefix(seq)
                    runs.extend(plan.runs(len(prefix), seqs))
                    cells_free -= cost
                    active.append(plan)
                    self.counters["prompt_tokens"] += sum(len(option) for option in plan.options)
                    self.counters["prompt_tokens_decoded"] += cost
                self._decode_runs(runs)
                for plan in [plan for plan in active if plan.pending == 0]:
                    active.remove(plan)
                    for seq in plan.seqs:
                        cache.drop_sequence(seq)
                        free_seqs.append(seq)
                    cells_free += plan.cost(len(prefix))
        finally:
            cache.drop_working_sequences()

    def _decode_runs(self, runs: deque[Run]) -> None:
        """Fill one batch from the front of the runs, decode it, hand each output row to its run."""
        batch = self.cache.batch
        assert batch is not None, "model closed"
        batch.clear()
        outputs: list[tuple[int, Run, int]] = []
        while runs and batch.n < batch.capacity:
            run = runs[0]
            room = batch.capacity - batch.n
            room_outputs = self.cache.max_outputs - len(outputs)
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
        self.cache.decode(batch.raw_for_decode(), batch.n)
        for index, run, offset in outputs:
            run.consume(offset, self.cache.logits(index))


@dataclass
class Run:
    """Tokens that go into the same sequences at consecutive positions (an item's own context,
    or one option's tokens), with the positions whose logits score a continuation token."""

    tokens: list[int]
    pos0: int
    seqs: list[int]
    wants: dict[int, list[tuple[int, int]]]
    """offset in the run -> [(option, index of the token it predicts)]"""
    plan: ItemPlan
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
class ItemPlan:
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

    def runs(self, prefix_len: int, seqs: list[int]) -> list[Run]:
        """The shared part once, tagged with every option's sequence, then each option's own tokens.
        The last token of an option is never decoded: nothing follows it."""
        self.seqs = seqs
        self.logprobs = [[0.0] * (len(o) - s) for o, s in zip(self.options, self.starts)]
        self.greedy = [[False] * (len(o) - s) for o, s in zip(self.options, self.starts)]
        end = self.shared_end
        shared_wants = [(i, end) for i, start in enumerate(self.starts) if start == end]
        runs = [Run(self.options[0][prefix_len:end], prefix_len, seqs,
                    {end - 1 - prefix_len: shared_wants} if shared_wants else {}, self)]
        for i, (option, start) in enumerate(zip(self.options, self.starts)):
            wants = {pos - end: [(i, pos + 1)] for pos in range(max(end, start - 1), len(option) - 1)}
            runs.append(Run(option[end : len(option) - 1], end, [seqs[i]], wants, self))
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
