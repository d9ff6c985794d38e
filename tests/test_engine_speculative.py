"""Speculative decoding gives the greedy answer: drafted tokens are kept only where the model's own
greedy choice agrees, whatever is drafted (all right, none right, some), wherever the draft runs past
the end of the answer (a stop string, end of turn, max_tokens), one sequence or batched.

The exact checks run on a float32 model, where a batch of k+1 tokens and one token at a time agree to
float precision; on the quantized demo models they may differ at near-ties (see engine/llama_context.py)."""

from __future__ import annotations

import pytest

from edgeeval.engine import EngineSettings, drafting
from edgeeval.engine.drafting import PromptLookup
from edgeeval.engine.llama import LlamaModel


def test_prompt_lookup_drafts_what_followed_the_latest_match():
    lookup = PromptLookup()
    history = [5, 6, 7, 8, 9, 1, 2, 6, 7]
    assert lookup.propose(history, 3) == [8, 9, 1]  # "6 7" was followed by 8 9 1
    assert lookup.propose(history + [8, 4, 6, 7], 2) == [8, 4]  # now the latest "6 7" is followed by 8 4
    assert lookup.propose([1, 2, 3], 4) == []  # no earlier occurrence of anything
    assert lookup.propose([1, 2, 3, 1, 2, 3, 4, 5], 0) == []


def test_prompt_lookup_prefers_the_longest_match():
    lookup = PromptLookup()
    # "3" alone was last followed by 9; "2 3" by 4.
    assert lookup.propose([2, 3, 4, 4, 3, 9, 2, 3], 2) == [4, 4]


class Scripted:
    """Drafts from the known greedy answers: all of the true continuation, none of it (every token
    off by one), or some (the first half right), optionally with `tail` tokens drafted after the end."""

    name = "scripted"

    def __init__(self, answers: dict[tuple[int, ...], list[int]], how: str, tail: list[int] = ()):
        self.answers, self.how, self.tail = answers, how, list(tail)

    def propose(self, history: list[int], n: int) -> list[int]:
        for prompt, answer in self.answers.items():
            if tuple(history[: len(prompt)]) == prompt:
                done = len(history) - len(prompt)
                right = (answer + self.tail)[done : done + n]
                if self.how == "all":
                    return right
                wrong = [(t + 1) % 1000 for t in right]
                return wrong if self.how == "none" else right[: len(right) // 2] + wrong[len(right) // 2 :]
        raise AssertionError("drafting for a prompt it was not given")


PROMPTS = [f"Case {i}: " + "fever and cough " * (i * 5 % 11) + "diagnosis:" for i in range(5)]


@pytest.fixture(scope="module")
def tiny(tiny_f32_path):
    path = tiny_f32_path
    model = LlamaModel(str(path), EngineSettings(n_ctx=1024, n_batch=64, n_ubatch=64, n_threads=1).resolved())
    yield path, model
    model.close()


class Nothing:
    name = "nothing"

    def propose(self, history, n):
        return []


def greedy_tokens(model, prompts, max_tokens, ignore_eos=True) -> dict[tuple[int, ...], list[int]]:
    """The greedy answers' tokens, one token per decode (the speculative loop with empty drafts)."""
    answers = {}
    for prompt in prompts:
        tokens = model.tokenize(prompt)
        model.feed_prompt(tokens)
        answers[tuple(tokens)] = model.generator.speculative_loop(tokens, max_tokens, [], ignore_eos, Nothing(), 0.0).generated
    return answers


@pytest.mark.real_model
@pytest.mark.parametrize("how", ["all", "none", "some"])
def test_any_draft_gives_the_greedy_answer(tiny, how):
    _, model = tiny
    plain = [model.generate(p, 24, [], ignore_eos=True) for p in PROMPTS]
    answers = greedy_tokens(model, PROMPTS, 24)
    drafter = Scripted(answers, how)
    single = [model.generate(p, 24, [], ignore_eos=True, speculative=drafter) for p in PROMPTS]
    batched = model.generate_many(PROMPTS, 24, [], n_parallel=3, ignore_eos=True, speculative=drafter)
    for got in (single, batched):
        assert [g.text for g in got] == [g.text for g in plain]
        assert [g.n_output_tokens for g in got] == [24] * len(PROMPTS)
        drafted = sum(g.notes["speculative"]["drafted"] for g in got)
        accepted = sum(g.notes["speculative"]["accepted"] for g in got)
        assert drafted > 0
        if how == "all":
            assert accepted == drafted
            assert all(g.notes["speculative"]["drafted"] <= 24 - 1 for g in got)
        elif how == "none":
            assert accepted == 0
        else:
            assert 0 < accepted < drafted


@pytest.mark.real_model
def test_a_draft_crossing_a_stop_string_ends_where_greedy_does(tiny):
    _, model = tiny
    plain = [model.generate(p, 24, [], ignore_eos=True) for p in PROMPTS]
    answers = greedy_tokens(model, PROMPTS, 24)
    for prompt, whole in zip(PROMPTS, plain):
        stop = whole.text[len(whole.text) // 2 : len(whole.text) // 2 + 3]
        if not stop.strip():
            continue
        expected = model.generate(prompt, 24, [stop], ignore_eos=True)
        got = model.generate(prompt, 24, [stop], ignore_eos=True, speculative=Scripted(answers, "all"))
        assert (got.text, got.finish_reason, got.n_output_tokens) == (
            expected.text, "stop", expected.n_output_tokens)
        [batched] = model.generate_many([prompt, PROMPTS[0]], 24, [stop], n_parallel=2, ignore_eos=True,
                                        speculative=Scripted(answers, "all"))[:1]
        assert batched.text == expected.text


@pytest.mark.real_model
def test_a_draft_longer_than_max_tokens_stops_at_max_tokens(tiny):
    _, model = tiny
    plain = [model.generate(p, 24, [], ignore_eos=True) for p in PROMPTS]
    answers = greedy_tokens(model, PROMPTS, 24)
    for max_tokens in (1, 2, 5):
        expected = [model.generate(p, max_tokens, [], ignore_eos=True) for p in PROMPTS]
        got = [model.generate(p, max_tokens, [], ignore_eos=True, speculative=Scripted(answers, "all"))
               for p in PROMPTS]
        assert [g.text for g in got] == [g.text for g in expected]
        assert all(g.finish_reason == "length" and g.n_output_tokens == max_tokens for g in got)
        assert all(g.notes["speculative"]["drafted"] <= max_tokens - 1 for g in got)


@pytest.mark.real_model
def test_a_draft_crossing_the_end_of_turn_ends_there(real_models):
    model = LlamaModel(str(real_models["smollm2"]), EngineSettings(n_ctx=1024, n_threads=1).resolved())
    try:
        prompt = ("<|im_start|>user\nName the capital of France in one word.<|im_end|>\n"
                  "<|im_start|>assistant\n")
        expected = model.generate(prompt, 48, [])
        assert expected.finish_reason == "stop" and expected.n_output_tokens < 48  # ended by end of turn
        eos = next(t for t in range(model.n_vocab) if model.is_end(t))
        drafter = Scripted(greedy_tokens(model, [prompt], 48, ignore_eos=False), "all", tail=[eos, 42, 43, 44])
        got = model.generate(prompt, 48, [], speculative=drafter)
        assert (got.text, got.finish_reason, got.n_output_tokens) == (
            expected.text, "stop", expected.n_output_tokens)
        assert got.notes["speculative"]["drafted"] > expected.n_output_tokens - 1  # it did draft past the end
    finally:
        model.close()


@pytest.mark.real_model
def test_a_model_drafting_for_itself_gives_the_greedy_answer(tiny, monkeypatch):
    path, model = tiny
    monkeypatch.setattr(drafting, "DRAFT_P_MIN", 0.0)  # a random model is never sure of anything
    pair = LlamaModel(str(path), EngineSettings(n_ctx=1024, n_batch=64, n_ubatch=64, n_threads=1,
                                                draft_model=str(path)).resolved())
    try:
        plain = [model.generate(p, 16, [], ignore_eos=True) for p in PROMPTS]
        got = [pair.generate(p, 16, [], ignore_eos=True, speculative="draft") for p in PROMPTS]
        assert [g.text for g in got] == [g.text for g in plain]
        drafted = sum(g.notes["speculative"]["drafted"] for g in got)
        assert drafted > 0 and sum(g.notes["speculative"]["accepted"] for g in got) == drafted
        assert pair.counters["accepted_tokens"] == drafted
    finally:
        pair.close()


@pytest.mark.real_model
def test_a_draft_model_with_another_vocabulary_is_refused_in_one_line(real_models):
    with pytest.raises(ValueError) as error:
        LlamaModel(str(real_models["smollm2"]), EngineSettings(n_ctx=256, n_threads=1,
                                                               draft_model=str(real_models["gemma"])).resolved())
    message = str(error.value)
    assert "does not share the vocabulary" in message and "\n" not in message
