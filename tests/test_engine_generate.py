"""Batched greedy generation through llama.cpp: prompts decoded together (continuous batching, a
finished sequence's slot refilled from the queue) must give the answers that one prompt at a time
gives, and each answer must end the way a single one would (stop string, token limit, error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeeval.data.multiple_choice import load_multiple_choice
from edgeeval.engine import EngineSettings
from edgeeval.engine.llama import LlamaModel
from edgeeval.prompting.prompts import TaskPrompt

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "benchmarks" / "clinical" / "data" / "case_challenges_sample.csv"
SYSTEM = "You are an experienced physician answering a clinical case challenge. Be accurate and concise."
CHAT = {
    "smollm2": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n",
}


def case_prompts(model: str, n: int) -> list[str]:
    """The bundled case challenges through the task's template, in the model's chat format."""
    template = TaskPrompt(Path("prompts/case_challenge.j2"), ROOT)
    return [CHAT[model].format(system=SYSTEM, user=template.render(e)) for e in load_multiple_choice(CASES)[:n]]


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def demo(request, real_models):
    model = LlamaModel(str(real_models[request.param]), EngineSettings(n_ctx=4096, n_threads=1).resolved())
    yield request.param, model
    model.close()


def test_batched_answers_equal_one_at_a_time_on_the_case_challenges(demo):
    name, model = demo
    prompts = case_prompts(name, 10)
    batched = model.generate_many(prompts, 32, [], n_parallel=4)  # 10 prompts through 4 slots
    single = [model.generate(prompt, 32, []) for prompt in prompts]
    assert all(g.failure is None and g.n_output_tokens for g in batched)
    differ = [i for i, (b, s) in enumerate(zip(batched, single)) if b.text != s.text]
    # The kernels round differently for other batch layouts, so an answer may rarely drift
    # (the speed benchmark reports the rate on all 36 cases).
    assert len(differ) <= 1, [(batched[i].text, single[i].text) for i in differ]
    for b, s in zip(batched, single):
        assert b.n_prompt_tokens == s.n_prompt_tokens


def test_tiny_model_batched_answers_equal_one_at_a_time_exactly(tiny_f32_path):
    model = LlamaModel(str(tiny_f32_path), EngineSettings(n_ctx=2048, n_batch=64, n_ubatch=64, n_threads=1).resolved())
    try:
        prompts = [f"Case {i}: " + "fever and cough " * (i * 7 % 23) for i in range(12)]
        for n_parallel in (1, 3, 16):
            batched = model.generate_many(prompts, 12, [], n_parallel=n_parallel)
            assert [g.text for g in batched] == [model.generate(p, 12, []).text for p in prompts]
    finally:
        model.close()


@pytest.mark.parametrize("layout", ["streams", "unified"])
def test_shared_prefixes_are_decoded_once_and_change_no_answer(tiny_f32_path, layout):
    """Two groups of prompts, each sharing a long prefix (a task's shots, a patient's documents): the holder is
    set for the first group, kept across calls, cut back and extended for the second; every answer equals the
    one-at-a-time answer (float32 weights: exactly) and the shared tokens are decoded once per group."""
    model = LlamaModel(str(tiny_f32_path), EngineSettings(n_ctx=2048, n_batch=64, n_ubatch=64, n_threads=1).resolved())
    model.streams.layout = layout
    try:
        shots = "Example: fever and cough means pneumonia. " * 6
        documents = shots + "Document: the patient had a rash for three weeks after the new drug. " * 5
        first = [shots + f"Case {i}: " + "chest pain " * i for i in range(5)]
        second = [documents + f"Question {i}: which drug?" + " why" * i for i in range(4)]
        single = [model.generate(p, 12, []).text for p in first + second]
        before = dict(model.counters)
        batched = model.generate_many(first[:3], 12, [], n_parallel=2)
        batched += model.generate_many(first[3:], 12, [], n_parallel=2)  # the holder kept from the last call
        shared = [g.notes["prefix_tokens_reused"] for g in batched]
        batched += model.generate_many(second, 12, [], n_parallel=3)
        assert [g.text for g in batched] == single
        n_shots = len(model.vocabulary.tokenize(shots)) - 1  # the shots' last token may merge with what follows
        assert all(n >= n_shots for n in shared)
        reused = [g.notes["prefix_tokens_reused"] for g in batched[5:]]
        assert all(n > len(model.vocabulary.tokenize(documents)) - 3 for n in reused)
        decoded = model.counters["prompt_tokens_decoded"] - before["prompt_tokens_decoded"]
        total = model.counters["prompt_tokens"] - before["prompt_tokens"]
        assert total == sum(len(model.vocabulary.tokenize(p)) for p in first + second)
        # Each group's prefix once (the second's only past the shots it shares with the first), the rest per prompt.
        assert decoded <= total - sum(shared[1:]) - sum(reused[1:]) + 8
        model.streams.share = False  # off: every prompt decoded whole, the same answers
        before = model.counters["prompt_tokens_decoded"]
        assert [g.text for g in model.generate_many(second, 12, [], n_parallel=3)] == single[5:]
        assert model.counters["prompt_tokens_decoded"] - before == sum(len(model.vocabulary.tokenize(p)) for p in second)
    finally:
        model.close()


def test_the_holder_cut_back_to_what_the_next_group_shares(tiny_f32_path):
    """The holder holds the system prompt and the first patient's documents; the next patient's prompts share only
    the system prompt: the holder is cut back to it and extended by the second patient's documents, and the
    answers stay the one-at-a-time ones."""
    model = LlamaModel(str(tiny_f32_path), EngineSettings(n_ctx=2048, n_batch=64, n_ubatch=64, n_threads=1).resolved())
    try:
        system = "You answer questions about a patient's documents. " * 4
        patients = [system + f"Documents of patient {p}: " + f"the {p} report says fever and a rash. " * 8
                    for p in ("first", "second", "third")]
        prompts = [docs + f" Question {q}: " + "what happened? " * q for docs in patients for q in range(1, 4)]
        single = [model.generate(p, 10, []).text for p in prompts]
        held = []
        for start in range(0, len(prompts), 4):  # engine calls of 4: a group split across calls
            gens = model.generate_many(prompts[start : start + 4], 10, [], n_parallel=2)
            assert [g.text for g in gens] == single[start : start + 4]
            held.append(list(model.streams.held))
        docs = [model.vocabulary.tokenize(d) for d in patients]
        assert held[-1][: len(docs[2]) - 2] == docs[2][: len(docs[2]) - 2]  # the last patient's documents
    finally:
        model.close()


def test_each_answer_ends_like_a_single_one(real_models):
    model = LlamaModel(str(real_models["gemma"]), EngineSettings(n_ctx=512, n_threads=1).resolved())
    try:
        full = model.generate("The heart has four", 40, []).text
        stop = full.split()[2]
        prompts = ["The heart has four", "fever " * 600, "The heart has four", "The liver is"]
        results = model.generate_many(prompts, 40, [stop])
        assert results[0].finish_reason == "stop" and stop not in results[0].text
        assert full.startswith(results[0].text) and results[2].text == results[0].text
        assert results[1].failure.message.startswith("prompt_too_long") and results[1].text is None
        limited = model.generate_many(["The heart has four", "The liver is"], 5, [])
        assert [g.finish_reason for g in limited] == ["length", "length"]
        assert [g.n_output_tokens for g in limited] == [5, 5]
        # The cache is left consistent: a single generation afterwards is unaffected.
        assert model.generate("The heart has four", 40, []).text == full
        tokens = model.info()["tokens"]
        assert tokens["generated_tokens"] > 0 and tokens["prompt_tokens_decoded"] < tokens["prompt_tokens"]
    finally:
        model.close()
