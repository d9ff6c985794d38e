"""The scoring and batched-generation operations through the worker process: the fake engine's
answers are deterministic, a native crash is retried once on a fresh worker and then becomes an
error (never a wrong score), and the real engine answers the same through the worker as in process."""

from __future__ import annotations

import pytest

from edgeeval.engine import EngineError, EngineSettings
from edgeeval.engine.fake import FakeModel
from edgeeval.engine.worker import FAULT_ENV, WorkerEngine
from conftest import write_tiny_gguf

FAKE = EngineSettings(backend="fake")
ITEMS = [("A 58-year-old man has chest pain. Answer:", [" aspirin", " intravenous normal saline", " morphine"]),
         ("A child has a barking cough. Answer:", [" croup", " epiglottitis"])]


def test_fake_scores_are_deterministic_and_shaped_like_real_ones(tmp_path):
    model = FakeModel("bio.gguf", FAKE)
    scores = model.loglikelihood_many(ITEMS)
    assert scores == FakeModel("bio.gguf", FAKE).loglikelihood_many(ITEMS)
    assert scores[0] == model.loglikelihood(*ITEMS[0])  # packing does not change a score
    assert scores != FakeModel("general.gguf", FAKE).loglikelihood_many(ITEMS)  # models differ
    for score, option in zip(scores[0], ITEMS[0][1]):
        assert score["error"] is None and score["n_tokens"] == len(option.split())
        assert score["logprob"] < 0 and score["mean_logprob"] == pytest.approx(score["logprob"] / score["n_tokens"])
        assert len(score["token_logprobs"]) == len(score["greedy"]) == score["n_tokens"]
    letters = model.letter_logprobs("Which? A or B. Answer:", [" A", " B"])
    assert list(letters) == [" A", " B"] and all(v < 0 for v in letters.values())
    assert letters == model.letter_logprobs("Which? A or B. Answer:", [" A", " B"])
    assert model.loglikelihood("Q:", [" a", " "])[1]["error"].startswith("empty_continuation")
    with pytest.raises(EngineError, match="not_single_token"):
        model.letter_logprobs("Q:", [" A", " two words"])


def test_fake_batched_generation_equals_one_at_a_time():
    model = FakeModel("bio.gguf", FAKE)
    prompts = [f"Case {i}\nA. one\nB. two\nC. three" for i in range(7)]
    assert model.generate_many(prompts, 16, []) == [model.generate(p, 16, []) for p in prompts]


def test_worker_serves_the_new_operations_and_counts_tokens(tmp_path):
    path = write_tiny_gguf(tmp_path / "bio.gguf", "bio")
    engine = WorkerEngine(path, FAKE)
    try:
        assert engine.loglikelihood_many(ITEMS) == FakeModel(str(path), FAKE).loglikelihood_many(ITEMS)
        assert engine.loglikelihood(*ITEMS[1]) == engine.loglikelihood_many(ITEMS)[1]
        assert set(engine.letter_logprobs("Q? Answer:", [" A", " B"])) == {" A", " B"}
        gens = engine.generate_many(["one", "two", "three"], 8, [])
        assert [g.text for g in gens] == [engine.generate(p, 8, []).text for p in ["one", "two", "three"]]
        assert engine.info()["tokens"]["prompt_tokens"] > 0
        with pytest.raises(EngineError, match="prompt_too_long"):
            engine.letter_logprobs("word " * 5000, [" A"])
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["segv", "abort"])
def test_a_crash_while_scoring_is_retried_once_then_recorded(tmp_path, monkeypatch, kind):
    monkeypatch.setenv(FAULT_ENV, f"{kind}:POISON")
    engine = WorkerEngine(write_tiny_gguf(tmp_path / "bio.gguf", "bio"), FAKE)
    try:
        scores = engine.loglikelihood_many([("POISON case", [" a", " b"]), ITEMS[1]])
        assert all(s["error"].startswith("native crash") and s["logprob"] is None for item in scores for s in item)
        assert engine.restarts == 2 and len(engine.crashes) == 2
        with pytest.raises(EngineError, match="native crash"):
            engine.letter_logprobs("POISON", [" A"])
        gens = engine.generate_many(["fine", "POISON"], 8, [])
        assert all(g.error.startswith("native crash") and g.text is None for g in gens)
        # The worker is usable afterwards.
        assert engine.loglikelihood(*ITEMS[0])[0]["error"] is None
    finally:
        engine.close()


@pytest.mark.real_model
def test_real_engine_through_the_worker_equals_in_process(real_models):
    from edgeeval.engine.llama import LlamaModel

    settings = EngineSettings(n_ctx=1024, n_threads=1)
    engine = WorkerEngine(real_models["smollm2"], settings)
    local = LlamaModel(str(real_models["smollm2"]), settings.resolved())
    try:
        assert engine.loglikelihood_many(ITEMS) == local.loglikelihood_many(ITEMS)
        prompt = "Which drug treats croup?\nA. dexamethasone\nB. amoxicillin\nAnswer:"
        assert engine.letter_logprobs(prompt, [" A", " B"]) == local.letter_logprobs(prompt, [" A", " B"])
        gens = engine.generate_many(["The heart has four", "Anemia means"], 12, [])
        assert [g.text for g in gens] == [g.text for g in local.generate_many(["The heart has four", "Anemia means"], 12, [])]
        tokens = engine.info()["tokens"]
        assert tokens["prompt_tokens"] > tokens["prompt_tokens_decoded"] > 0
    finally:
        engine.close()
        local.close()
