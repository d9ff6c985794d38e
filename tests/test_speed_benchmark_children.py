"""The speed benchmark's measuring children (`benchmarks/speed/run.py --child`, in benchmarks/speed/children.py).
The suite never runs the benchmark itself, so these keep the children in step with the engine's API (the loglik
child once broke unnoticed when OptionScore became a pydantic model) and hold the divergence profile's control to
what its README says: decoding one token at a time through the profile's batch path is the plain computation, bit
for bit, and on a float32 model a multi-token decode agrees with it to float precision."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import LLAMA_THREADS

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The patient is a 58-year-old man with three days of chest pain on exertion. In one sentence:"


@pytest.fixture(scope="module")
def bench():
    """The benchmark's parts these tests use, imported from the repository's root as run.py imports them."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed import children, demo, inputs

    return SimpleNamespace(load_items=inputs.load_items, child_main=children.child_main,
                           picks_like_perplexity=demo.picks_like_perplexity)


def test_the_loglik_and_letter_children_measure_the_engine(bench, real_models):
    items, _ = bench.load_items()
    base = {"model": str(real_models["smollm2"]), "threads": LLAMA_THREADS, "n_ctx": 1024}
    loglik = bench.child_main({**base, "kind": "loglik", "items": items[:2], "prefix": ""})
    assert loglik["n_items"] == 2 and 0 < loglik["decode_seconds"] <= loglik["seconds"]
    scores = [score for item in loglik["scores"] for score in item]
    assert len(scores) == sum(len(item["options"]) for item in items[:2])
    assert all(s["logprob"] < 0 and s["n_tokens"] == len(s["token_logprobs"]) for s in scores)
    picks = bench.picks_like_perplexity(loglik)
    assert [0 <= p < len(item["options"]) for p, item in zip(picks, items)] == [True, True]
    letters = bench.child_main({**base, "kind": "letters", "items": items[:2]})
    assert letters["n_items"] == 2 and letters["tokens_decoded"] > 0 and len(letters["picks"]) == 2


def _divergence(bench, model: Path, chunk: int) -> list[dict]:
    out = bench.child_main({"model": str(model), "threads": LLAMA_THREADS, "n_ctx": 512, "kind": "divergence",
                            "chunk": chunk, "prompts": [PROMPT], "max_tokens": 16})
    positions = out["prompts"][0]["positions"]
    assert len(positions) >= 2, "too short an answer to compare anything"
    return positions


def test_the_divergence_control_is_bit_identical(bench, real_models):
    positions = _divergence(bench, real_models["smollm2"], chunk=1)
    assert [p["max_abs_delta"] for p in positions] == [0.0] * len(positions)
    assert not any(p["flip"] for p in positions)


def test_a_float32_model_decodes_several_tokens_as_it_decodes_one(bench, tiny_f32_path):
    positions = _divergence(bench, tiny_f32_path, chunk=5)
    assert max(p["max_abs_delta"] for p in positions) < 1e-3
    # A different greedy token could only come from a tie within that precision.
    assert all(not p["flip"] or p["margin"] < 1e-3 for p in positions)
