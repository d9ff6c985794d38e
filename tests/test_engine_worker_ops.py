"""The scoring and batched-generation operations through the worker process: the fake engine's
answers are deterministic, a native crash is retried once on a fresh worker and then becomes an
error (never a wrong score), and the real engine answers the same through the worker as in process."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgeeval.engine import EngineError, EngineSettings, Generation, OptionScore
from edgeeval.engine.fake import FakeModel
from edgeeval.engine.worker import FAULT_ENV, WorkerEngine
from edgeeval.types import ErrorKind, Failure

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
        assert score.failure is None and score.n_tokens == len(option.split())
        assert score.logprob < 0 and score.mean_logprob == pytest.approx(score.logprob / score.n_tokens)
        assert len(score.token_logprobs) == len(score.greedy) == score.n_tokens
    letters = model.letter_logprobs("Which? A or B. Answer:", [" A", " B"])
    assert list(letters) == [" A", " B"] and all(v < 0 for v in letters.values())
    assert letters == model.letter_logprobs("Which? A or B. Answer:", [" A", " B"])
    assert model.loglikelihood("Q:", [" a", " "])[1].failure.message.startswith("empty_continuation")
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
        assert all(s.failure.message.startswith("native crash") and s.logprob is None for item in scores for s in item)
        assert engine.restarts == 2 and len(engine.crashes) == 2
        with pytest.raises(EngineError, match="native crash"):
            engine.letter_logprobs("POISON", [" A"])
        gens = engine.generate_many(["fine", "POISON"], 8, [])
        assert all(g.failure.message.startswith("native crash") and g.text is None for g in gens)
        # The worker is usable afterwards.
        assert engine.loglikelihood(*ITEMS[0])[0].failure is None
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


def test_typed_scores_and_error_kinds_cross_the_worker(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "segv:POISON")
    engine = WorkerEngine(write_tiny_gguf(tmp_path / "bio.gguf", "bio"), FAKE)
    try:
        scored, empty = engine.loglikelihood("Q:", [" a b", " "])
        assert isinstance(scored, OptionScore) and scored.token_logprobs and scored.failure is None
        assert scored == FakeModel(str(tmp_path / "bio.gguf"), FAKE).loglikelihood("Q:", [" a b"])[0]
        assert empty.failure.kind is ErrorKind.EMPTY_CONTINUATION and empty.failure.message.startswith("empty_continuation: ")
        with pytest.raises(EngineError) as refused:
            engine.letter_logprobs("Q:", [" A", " two words"])
        assert refused.value.kind is ErrorKind.NOT_SINGLE_TOKEN and str(refused.value).startswith("not_single_token: ")
        assert engine.generate("word " * 5000, 8, []).failure.kind is ErrorKind.PROMPT_TOO_LONG
        crashed = engine.loglikelihood("POISON", [" a"])[0]
        assert crashed.failure.kind is ErrorKind.NATIVE_CRASH and crashed.failure.message.startswith("native crash: worker ")
        assert engine.generate("POISON", 8, []).failure.kind is ErrorKind.NATIVE_CRASH
    finally:
        engine.close()


def test_option_score_constructors_and_the_record_entry():
    scored = OptionScore.scored([-0.5, -1.5], [True, False], n_context_tokens=7)
    assert (scored.logprob, scored.mean_logprob, scored.n_tokens, scored.is_greedy) == (-2.0, -1.0, 2, False)
    assert scored.record_entry() == {"logprob": -2.0, "mean_logprob": -1.0, "n_tokens": 2,
                                     "token_logprobs": [-0.5, -1.5], "is_greedy": False}
    letter = OptionScore.single_token(-0.25)
    assert letter.record_entry() == {"logprob": -0.25, "mean_logprob": -0.25, "n_tokens": 1,
                                     "token_logprobs": [-0.25], "is_greedy": None}
    failed = OptionScore.failed(ErrorKind.TOO_MANY_OPTIONS, "40 options")
    assert failed.failure.message == "too_many_options: 40 options" and failed.logprob is None
    for score in (scored, letter, failed, OptionScore.scored([float("-inf")], [False], 1)):
        assert OptionScore.from_wire(score.to_wire()) == score
    with pytest.raises(ValidationError):
        OptionScore(logprob=-1.0, surprise=1)


def test_a_failure_always_has_a_kind_and_crosses_the_worker_whole():
    with pytest.raises(TypeError):
        Failure("engine: boom")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="is not a valid ErrorKind"):
        Failure("boom", "x")  # type: ignore[arg-type]
    failed = Generation.failed(ErrorKind.ENGINE, "boom", n_prompt_tokens=3)
    assert (failed.text, failed.finish_reason, failed.failure.message, failed.n_prompt_tokens) == \
        (None, "error", "engine: boom", 3)
    assert Generation.from_wire(failed.to_wire()) == failed and failed.failure.kind is ErrorKind.ENGINE
    answered = Generation("B", 5, 1, "stop", notes={"prefix_tokens_reused": 4})
    assert Generation.from_wire(answered.to_wire()) == answered


def test_a_unit_that_times_out_twice_is_recorded_as_a_timeout(tmp_path):
    engine = WorkerEngine(write_tiny_gguf(tmp_path / "bio.gguf", "bio"),
                          EngineSettings(backend="fake", fake_delay_s=5.0, unit_timeout_s=0.5))
    try:
        gen = engine.generate("a slow case", 8, [])
        assert gen.failure.kind is ErrorKind.TIMEOUT and gen.failure.message.startswith("timeout: worker timed out after")
        assert engine.restarts == 2
    finally:
        engine.close()


def test_generation_refuses_an_unknown_finish_reason():
    with pytest.raises(ValueError, match="finish_reason"):
        Generation(text="x", finish_reason="eos")
    for reason in ("stop", "length", "context", None):
        assert Generation(text="x", finish_reason=reason).finish_reason == reason
