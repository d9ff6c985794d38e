"""Fitting prompts by the model's own tokens, as the study did: CLUE's LongHealth document filling (the answer's
documents first, the last one cut by tokens) and its server's keep-the-rightmost-tokens. A word is a token here
(the fake engine's tokenizer); tests/test_real_model.py does the same with a real model's vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeeval.config.models import load_models_config
from edgeeval.config.tasks import ContextSpec
from edgeeval.data.example import Example
from edgeeval.engine import EngineSettings
from edgeeval.engine.fake import FakeModel
from edgeeval.prompting.token_budget import TokenCounter, fill_documents, keep_right
from edgeeval.run.planning import plan_units, prepare_model, prepare_task
from edgeeval.types import ErrorKind

WORDS = TokenCounter(FakeModel("fake.gguf", EngineSettings()))
FILL = ContextSpec(policy="truncate", field="documents", rule="fill_documents", max_prompt_tokens=60)


def document(name: str, words: int, rank: int) -> dict:
    return {"text": " ".join(f"{name}{i}" for i in range(words)), "rank": rank}


def example(*documents: dict) -> Example:
    return Example(id="q1", fields={"question": "Which one?", "documents": list(documents)}, gold="A", source="x:1")


def render(ex: Example) -> str:
    """Ten words of frame (system, question, options), then the documents."""
    return " ".join(["frame"] * 10 + [d["text"] for d in ex.fields["documents"]])


def test_the_answers_documents_come_first_and_the_first_that_does_not_fit_is_cut_by_tokens():
    # Shown order: a distractor, the answer's two documents, two more distractors.
    shown = [document("d", 20, 2), document("a", 15, 0), document("b", 10, 1), document("e", 30, 3),
             document("f", 5, 4)]
    fitted = fill_documents(example(*shown), FILL, budget=1000, render=render, tokens=WORDS)
    kept = fitted.example.fields["documents"]
    # 60 - 10 frame = 50: a (15), b (10) and d (20) whole, e cut to the 5 tokens left, f left out; shown order kept.
    assert [d["rank"] for d in kept] == [2, 0, 1, 3]
    assert kept[3]["text"].split() == [f"e{i}" for i in range(5)] and kept[0] == shown[0]
    assert WORDS.count(render(fitted.example)) == 60
    assert fitted.truncation == {"policy": "truncate", "rule": "fill_documents", "field": "documents", "cap_tokens": 60,
                                 "tokens": 60, "documents_kept": 4, "documents_dropped": 1,
                                 "last_document_cut_to_tokens": 5}


def test_documents_that_fit_are_not_cut_and_the_window_caps_the_cap():
    shown = [document("a", 15, 0), document("b", 10, 1)]
    assert fill_documents(example(*shown), FILL, budget=1000, render=render, tokens=WORDS).truncation is None
    fitted = fill_documents(example(*shown), FILL, budget=30, render=render, tokens=WORDS)  # window < the cap
    assert WORDS.count(render(fitted.example)) == 30 and fitted.truncation["cap_tokens"] == 30


def test_a_frame_that_fills_the_cap_alone_is_an_error_record():
    fitted = fill_documents(example(document("a", 5, 0)), FILL, budget=8, render=render, tokens=WORDS)
    assert fitted.failure is not None and fitted.failure.kind is ErrorKind.PROMPT_TOO_LONG


def test_keep_right_keeps_the_rightmost_tokens_one_fewer_for_the_start_token():
    text = " ".join(f"w{i}" for i in range(100))
    kept, note = keep_right(text, 40, WORDS)
    assert kept == " ".join(f"w{i}" for i in range(61, 100)) and WORDS.count(kept) == 39
    assert note == {"rule": "keep_right", "tokens_before": 100, "tokens_kept": 39, "budget_tokens": 40}
    assert keep_right("short text", 40, WORDS) == ("short text", None)


def test_counts_are_remembered_by_text():
    calls = []

    class Counting:
        def count_tokens(self, texts):
            calls.append(list(texts))
            return [len(t.split()) for t in texts]

        def token_slice(self, text, start, end):
            return " ".join(text.split()[start:end])

    tokens = TokenCounter(Counting())
    assert tokens.counts(["a b", "c", "a b"]) == [2, 1, 2] and tokens.count("c") == 1
    assert calls == [["a b", "c"]]


def small_window(n_ctx: int) -> str:
    from conftest import FAKE_MODELS_TOML

    return FAKE_MODELS_TOML.replace('chat_template = "prompts/chat/chatml.j2"\n',
                                    f'chat_template = "prompts/chat/chatml.j2"\nn_ctx = {n_ctx}\n')


def test_a_longhealth_prompt_is_filled_to_the_cap_in_the_models_tokens(tmp_path: Path):
    from conftest import make_project

    project_dir = make_project(tmp_path, small_window(700))
    project = load_models_config(project_dir / "models.toml", models_dir=str(tmp_path / "models"))
    task = prepare_task(project, "longhealth_t2", None, 2)
    units, _ = plan_units(prepare_model(project, "general-small"), task, WORDS)
    cut = [u for u in units if u.truncation]
    assert cut and all(u.failure is None for u in units)
    for unit in cut:
        # The window (700) less the answer's 50 tokens caps the prompt below CLUE's 8,140.
        assert unit.truncation["cap_tokens"] == 650 and WORDS.count(unit.prompt) <= 650
        assert unit.truncation["documents_dropped"] >= 1 or unit.truncation["last_document_cut_to_tokens"]


def test_the_keep_right_rule_cuts_the_start_of_a_long_prompt(tmp_path: Path):
    from conftest import make_project

    project_dir = make_project(tmp_path, small_window(300))
    project = load_models_config(project_dir / "models.toml", models_dir=str(tmp_path / "models"))
    task = prepare_task(project, "medisumqa", None, 2)
    units, _ = plan_units(prepare_model(project, "general-small"), task, WORDS)
    assert units and all(u.truncation and u.truncation["rule"] == "keep_right" for u in units)
    # The conversation's start (the system text) went; its end, the question and the reply cue, stayed.
    assert all("<|im_start|>system" not in u.prompt and u.prompt.endswith("Answer: ") for u in units)
    assert all(WORDS.count(u.prompt) == 300 - 200 - 1 for u in units)


@pytest.mark.real_model
def test_a_longhealth_prompt_is_filled_to_the_cap_in_a_real_models_tokens(tmp_path: Path, real_models):
    """SmolLM2's own tokenizer (a vocabulary-only worker): the whole prompt stays within the cap, and the last
    document is cut by its tokens."""
    import re

    from edgeeval.engine.worker import WorkerEngine

    from conftest import ROOT, make_project

    project_dir = make_project(tmp_path, (ROOT / "models.toml").read_text())
    toml = project_dir / "benchmarks/clinical/longhealth_t2.toml"
    toml.write_text(re.sub(r"max_prompt_tokens = \d+", "max_prompt_tokens = 700", toml.read_text()))
    project = load_models_config(project_dir / "models.toml")
    model = prepare_model(project, "smollm2-135m-instruct")
    engine = WorkerEngine(model.path, EngineSettings(n_ctx=model.n_ctx, vocab_only=True, n_threads=1))
    try:
        tokens = TokenCounter(engine)
        units, _ = plan_units(model, prepare_task(project, "longhealth_t2", None, 2), tokens)
        assert units and all(u.failure is None for u in units)
        assert all(engine.count_tokens([u.prompt])[0] <= 700 for u in units)
        cut = [u for u in units if u.truncation and u.truncation["last_document_cut_to_tokens"]]
        assert cut, [u.truncation for u in units]
        for unit in cut:
            assert 690 <= unit.truncation["tokens"] <= 700 and unit.truncation["cap_tokens"] == 700
    finally:
        engine.close()
