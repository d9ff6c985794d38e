"""Log-likelihood scoring through llama.cpp: options scored together (shared prefix, one sequence per
option, several items per batch) must give what one option at a time and a naive one-sequence
reference give; a prefix kept in the cache must give what a cold cache gives.

Two models, two tolerances (see engine_support for why): on a tiny float32 model the paths must
agree token by token, to 1e-3 of each token's log-probability; on the quantized demo models llama.cpp itself moves a token's score when
its keys sit in other cache cells, so there the check is the size of that noise (and the chosen
option), and any bookkeeping bug (a wrong position, sequence or logits row) is far larger."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeeval.data.multiple_choice import load_multiple_choice
from edgeeval.engine import EngineError, EngineSettings
from edgeeval.engine.llama import LlamaModel

from engine_support import NaiveScorer, assert_score_matches, assert_tokens_close

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "benchmarks" / "clinical" / "data" / "case_challenges_sample.csv"
# One thread: these tests check numbers, not speed, and on a busy machine a second llama.cpp
# thread mostly waits for the first.
SETTINGS = EngineSettings(n_ctx=2048, n_threads=1)
# The quantized models' noise (measured on the case challenges: most options move by less than
# 0.05 nats per token, a few by up to ~0.5); a wrong token or position costs several nats.
NOISE_PER_TOKEN = 0.6


def mc_items(n: int, shots: int = 0) -> list[tuple[str, list[str]]]:
    """Case challenges as (context, full-text options), optionally after a few solved examples."""
    examples = load_multiple_choice(CASES)
    prefix = "".join(f"Question: {e.fields['question']}\nAnswer: {e.fields['options'][e.gold]}\n\n"
                     for e in examples[-shots:]) if shots else ""
    return [(f"{prefix}Question: {e.fields['question']}\nAnswer:", [f" {t}" for t in e.fields["options"].values()])
            for e in examples[:n]]


@pytest.fixture(scope="module")
def tiny_path(tiny_f32_path) -> Path:
    return tiny_f32_path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    model = LlamaModel(str(tiny_path), SETTINGS.resolved())
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny_naive(tiny):
    scorer = NaiveScorer(tiny)
    yield scorer
    scorer.close()


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def demo(request, real_models):
    model = LlamaModel(str(real_models[request.param]), SETTINGS.resolved())
    yield model
    model.close()


def logprobs(scores) -> list[float]:
    assert all(s.failure is None for s in scores), scores
    return [s.logprob for s in scores]


# --- exact agreement on the float32 model ------------------------------------------------------

def test_batched_items_equal_one_option_at_a_time_and_the_naive_reference(tiny, tiny_naive):
    items = mc_items(6)
    batched = tiny.loglikelihood_many(items)
    for (context, options), scores in zip(items, batched):
        for option, score in zip(options, scores):
            whole, start = tiny.split_tokens(context, option)
            assert_score_matches(score, tiny.loglikelihood(context, [option])[0].token_logprobs)
            assert_score_matches(score, tiny_naive.token_logprobs(whole, start))


def test_the_tolerance_catches_a_bookkeeping_bug(tiny, tiny_naive):
    """The per-token check is loose enough for the float16 cache's drift and still sees a token scored
    from the wrong logits row, or with a context cell missing (see engine_support)."""
    context, options = mc_items(1)[0]
    for option, score in zip(options, tiny.loglikelihood(context, options)):
        whole, start = tiny.split_tokens(context, option)
        assert_score_matches(score, tiny_naive.token_logprobs(whole, start))
        for wrong in (tiny_naive.token_logprobs(whole, start, row_shift=-1),
                      tiny_naive.token_logprobs(whole, start, row_shift=1),
                      tiny_naive.token_logprobs(whole[1:], start - 1)):  # the first context cell lost
            with pytest.raises(AssertionError):
                assert_score_matches(score, wrong)


def test_scores_record_tokens_mean_and_greedy_flags(tiny, tiny_naive):
    context, options = mc_items(1)[0]
    for option, score in zip(options, tiny.loglikelihood(context, options)):
        whole, start = tiny.split_tokens(context, option)
        per_token = tiny_naive.token_logprobs(whole, start)
        assert score.n_tokens == len(whole) - start == len(score.greedy)
        assert score.n_context_tokens == start
        assert score.mean_logprob == pytest.approx(score.logprob / score.n_tokens)
        assert_score_matches(score, per_token)
        assert score.is_greedy == all(score.greedy)


def test_kept_few_shot_prefix_equals_a_cold_cache(tiny_path, tiny):
    items = mc_items(4, shots=3)
    warm = [tiny.loglikelihood(context, options) for context, options in items]  # one item per call
    counters = tiny.info()["tokens"]
    assert counters["prompt_tokens_decoded"] < counters["prompt_tokens"] / 2
    for (context, options), scores in zip(items, warm):
        cold = LlamaModel(str(tiny_path), SETTINGS.resolved())
        try:
            for score, fresh in zip(scores, cold.loglikelihood(context, options)):
                assert_score_matches(score, fresh.token_logprobs)
        finally:
            cold.close()


WORDS = ["fever", " cough", " the", " acute", " renal", " failure", ",", " of", " heart", "itis", " 5 mg",
         " daily", " B", " nephro", " IV", " saline", " x", " ", "\n"]


@st.composite
def item_batches(draw):
    """Items with random contexts and options: shared or unshared prefixes, options that share
    their first words, one-token and long options, several items per batch."""
    def words(pool: list[str], low: int, high: int) -> str:
        return "".join(draw(st.lists(st.sampled_from(pool), min_size=low, max_size=high)))

    shared = words(WORDS, 0, 12)
    n_items = draw(st.integers(1, 4))
    items = []
    for _ in range(n_items):
        own = words(WORDS, 1, 30)
        lead = draw(st.sampled_from(["", " the", " acute"]))
        options = [words(WORDS[:16], 1, 10) for _ in range(draw(st.integers(1, 6)))]
        items.append(("Case:" + shared + own, [lead + option for option in options]))
    return items


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=item_batches(), n_batch=st.sampled_from([16, 64, 512]))
def test_random_items_and_packings_equal_the_naive_reference(tiny_path, tiny_naive, items, n_batch):
    model = LlamaModel(str(tiny_path), EngineSettings(n_ctx=2048, n_batch=n_batch, n_ubatch=n_batch, n_threads=1).resolved())
    try:
        for (context, options), scores in zip(items, model.loglikelihood_many(items)):
            for option, score in zip(options, scores):
                whole, start = model.split_tokens(context, option)
                assert start < len(whole), (context, option)  # every option has tokens of its own
                assert_score_matches(score, tiny_naive.token_logprobs(whole, start))
    finally:
        model.close()


def test_letters_equal_one_token_options(tiny):
    prompt = mc_items(1)[0][0] + " The answer is"
    letters = tiny.letter_logprobs(prompt, [" A", " B", " C"])
    scores = tiny.loglikelihood(prompt, [" A", " B", " C"])
    assert list(letters) == [" A", " B", " C"]
    assert_tokens_close(list(letters.values()), logprobs(scores))
    with pytest.raises(EngineError, match="not_single_token"):
        tiny.letter_logprobs(prompt, [" A", " nephrology"])


# --- tokenization at the boundary --------------------------------------------------------------

def test_continuation_is_split_where_the_context_ends(tiny):
    # A trailing space belongs to the continuation: " B" is one token, as after "Answer:".
    whole, start = tiny.split_tokens("Answer: ", "B")
    assert (whole, start) == tiny.split_tokens("Answer:", " B")
    assert len(whole) - start == 1
    # Context and continuation are tokenized together: where no token spans the boundary, the
    # continuation's tokens are the ones the model would write after the context.
    whole, start = tiny.split_tokens("Answer:", " nephritis")
    assert whole == tiny.tokenize("Answer: nephritis") and whole[:start] == tiny.tokenize("Answer:")


@pytest.mark.parametrize("context, continuation", [
    ("Case:fever,", ","),  # hypothesis found it: ",," is one token, lm-eval's split leaves "," nothing
    ("The patient has nephr", "itis"),  # a word split across the boundary
])
def test_a_merge_across_the_boundary_still_scores_the_continuation(tiny, tiny_naive, context, continuation):
    own = tiny.tokenize(context)
    assert tiny.tokenize(context + continuation)[:len(own)] != own  # the tokenizer does merge here
    whole, start = tiny.split_tokens(context, continuation)
    # The context keeps its own tokens (the prompt's, as every other option sees it) and the
    # continuation is tokenized alone after them, without a start token.
    assert whole[:start] == own
    assert whole[start:] == tiny.tokenize(continuation, add_special=False) and start < len(whole)
    [score] = tiny.loglikelihood(context, [continuation])
    assert score.failure is None and score.n_tokens == len(whole) - start
    assert_score_matches(score, tiny_naive.token_logprobs(whole, start))


def test_bad_items_get_error_scores_and_the_rest_are_scored(tiny):
    too_long = ("fever " * 3000, [" yes", " no"])
    results = tiny.loglikelihood_many([too_long, ("Q:", [" a", ""]), ("Q:", [" a", " b"])])
    assert all(s.failure.message.startswith("prompt_too_long") for s in results[0])
    assert all(s.failure.message.startswith("empty_continuation") for s in results[1])
    assert all(s.failure is None for s in results[2])
    many_options = tiny.loglikelihood("Q:", [f" {i}" for i in range(40)])
    assert many_options[0].failure.message.startswith("too_many_options")


# --- the quantized demo models -----------------------------------------------------------------

def test_demo_models_batched_scores_match_the_naive_reference(demo):
    naive = NaiveScorer(demo)
    try:
        items = mc_items(4)
        same_choice = 0
        for (context, options), scores in zip(items, demo.loglikelihood_many(items)):
            reference = [naive.score(context, option) for option in options]
            for score, ref in zip(scores, reference):
                assert abs(score.logprob - ref) <= NOISE_PER_TOKEN * score.n_tokens
            means = [s.mean_logprob for s in scores]
            same_choice += np.argmax(means) == np.argmax([r / s.n_tokens for r, s in zip(reference, scores)])
        assert same_choice >= 3
    finally:
        naive.close()


def test_demo_models_are_deterministic_and_one_at_a_time_close(demo):
    items = mc_items(3)
    first = demo.loglikelihood_many(items)
    assert demo.loglikelihood_many(items) == first  # same call, same layout: bit for bit
    for (context, options), scores in zip(items, first):
        for option, score in zip(options, scores):
            alone = demo.loglikelihood(context, [option])[0]
            assert abs(alone.logprob - score.logprob) <= NOISE_PER_TOKEN * score.n_tokens


def test_gemma_sliding_window_prefix_longer_than_the_window(real_models):
    """Gemma 3 attends over a 512-token window in most layers: a kept few-shot prefix longer than
    that must still give a cold cache's scores (swa_full keeps every cell)."""
    model = LlamaModel(str(real_models["gemma"]), SETTINGS.resolved())
    cold = LlamaModel(str(real_models["gemma"]), SETTINGS.resolved())
    try:
        items = mc_items(3, shots=8)
        shared = os.path.commonprefix([tuple(model.tokenize(context)) for context, _ in items])
        assert len(shared) > 650  # the kept prefix alone is longer than the window
        for context, options in items:
            warm = model.loglikelihood(context, options)
            cold.loglikelihood("unrelated", [" text"])  # drop the kept prefix: a cold start below
            fresh = cold.loglikelihood(context, options)
            for a, b in zip(warm, fresh):
                assert abs(a.logprob - b.logprob) <= NOISE_PER_TOKEN * a.n_tokens
        tokens = model.info()["tokens"]
        assert tokens["prompt_tokens_decoded"] < tokens["prompt_tokens"] / 3
    finally:
        model.close()
        cold.close()
