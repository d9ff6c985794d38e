"""The loglik path on the small real GGUFs against a naive reference. A file of its own: it is the suite's longest
test (about 2-3 minutes on one thread), and pytest-xdist's --dist loadfile runs each file in one process, so
beside tests/test_real_model.py it no longer sets the whole suite's critical path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeeval.engine import EngineSettings
from edgeeval.run.store import read_records

from conftest import LLAMA_THREADS

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parent.parent
THREADS = ("--threads", str(LLAMA_THREADS))


def test_loglik_run_on_the_case_challenges_equals_a_naive_reference(tmp_path, real_models):
    """`run --mode loglik` through the worker (letter fast path, prefix kept across items) chooses
    what a naive reference chooses: each prompt decoded alone in a cleared cache, in one batch, the
    letters' log-probabilities read off the last row."""
    import numpy as np

    from edgeeval.engine.llama import LlamaModel

    from cli_support import run_cli
    from engine_support import NaiveScorer

    out = tmp_path / "run"
    assert run_cli(ROOT, "run", "--pair", "demo", "--task", "case_challenges", "--mode", "loglik", "--quiet",
                   "--out", str(out), *THREADS) == 0
    for key, name in (("smollm2", "smollm2-135m-instruct"), ("gemma", "gemma3-270m")):
        records = read_records(out / "records" / name / "case_challenges@loglik.jsonl")
        assert len(records) == 36 and all(r.error is None for r in records)
        model = LlamaModel(str(real_models[key]), EngineSettings(n_ctx=2048, n_threads=LLAMA_THREADS).resolved())
        naive = NaiveScorer(model)
        try:
            ours_right = naive_right = same = 0
            for record in records:
                letters = list(record.options)
                splits = [model.split_tokens(record.prompt, letter) for letter in letters]
                context = splits[0][0][: splits[0][1]]
                assert all(len(whole) - start == 1 and whole[:start] == context for whole, start in splits)
                reference = naive.next_token_logprobs(context, [whole[-1] for whole, _ in splits])
                ours = [record.scores[letter]["logprob"] for letter in letters]
                np.testing.assert_allclose(ours, reference, atol=0.6)  # quantized-kernel noise, see engine_support
                naive_choice = letters[int(np.argmax(reference))]
                ours_right += record.output == record.gold
                naive_right += naive_choice == record.gold
                same += naive_choice == record.output
            assert ours_right == naive_right and same >= 35, (key, ours_right, naive_right, same)
        finally:
            naive.close()
            model.close()
