"""BERTScore offline: the arithmetic (bert-score's), the encoder named in models.toml run once after the answers
(a real small BERT GGUF through llama.cpp), the scores cached in the run directory and read by `edgeeval report`,
and "not computed" (never 0) without an encoder; UMLS-F1 is always not computed, and says why."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeeval.config.models import load_models_config
from edgeeval.engine import EngineSettings
from edgeeval.engine.worker import WorkerEngine
from edgeeval.kinds.bertscore import bertscore, idf_weights
from edgeeval.run.bertscore import score_run
from edgeeval.run.score_cache import BERTSCORE_FILE

from cli_support import run_cli
from conftest import FAKE_MODELS_TOML, make_project
from engine_support import write_tiny_bert


def text(tokens: list[int], vectors: list[list[float]]) -> dict:
    return {"tokens": [0, *tokens, 1], "special": [True] + [False] * len(tokens) + [True],
            "vectors": [[1.0, 1.0, 1.0], *vectors, [1.0, -1.0, 0.0]]}


def test_greedy_matching_weighs_every_token_but_the_special_ones():
    cand = text([10, 11], [[1, 0, 0], [0, 1, 0]])
    ref = text([10, 12, 13], [[1, 0, 0], [0, 0, 1], [0.6, 0.8, 0]])
    precision, recall, f1 = bertscore(cand, ref)
    # candidate token 10 matches ref's [1,0,0] (1.0); token 11 [0,1,0] matches best [0.6,0.8,0] (0.8).
    assert precision == pytest.approx((1.0 + 0.8) / 2)
    # ref tokens: [1,0,0] -> 1.0; [0,0,1] and [0.6,0.8,0] -> best is cand's [CLS] [1,1,1]/sqrt3 (0.577, 0.808):
    # the special tokens weigh nothing but still match, as in bert-score.
    assert recall == pytest.approx((1.0 + 1 / math.sqrt(3) + 1.4 / math.sqrt(3)) / 3)
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall))
    assert bertscore(text([], []), ref) == (0.0, 0.0, 0.0)  # nothing weighted: an empty reply


def test_idf_is_bert_scores_over_the_references():
    refs = [text([10, 12], [[1, 0, 0], [0, 1, 0]]), text([10, 13], [[1, 0, 0], [0, 0, 1]])]
    weights = idf_weights(refs)
    assert weights[10] == pytest.approx(math.log(3 / 3)) and weights[12] == pytest.approx(math.log(3 / 2))
    assert weights[0] == pytest.approx(0.0)  # the special tokens occur everywhere (and weigh nothing anyway)


ENCODER_TOML = FAKE_MODELS_TOML + '''
[models.tiny-bert]
path = "bert.gguf"
source = "test: a random 2-layer BERT"
family = "general"
chat_template = "none"

[scoring]
bertscore_model = "tiny-bert"
'''


def fake_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--pair", "test", "--task", "meqsum", "--engine", "fake", "--quiet", "--limit", "4",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), *extra)


def results(out: Path, metric: str) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["metric"] == metric]


def test_without_an_encoder_bertscore_is_not_computed_and_says_why(tmp_path):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    assert fake_run(project, out) == 0
    rows = results(out, "bertscore_f1")
    assert rows and all(math.isnan(float(r["value"])) and r["n"] == "0" for r in rows)
    report = (out / "report.md").read_text()
    assert "bertscore_f1 not computed: no BERTScore encoder: name one in models.toml" in report
    assert json.loads((out / "manifest.json").read_text())["scoring"]["bertscore"]["computed"] is False
    with open(out / "comparison.csv", newline="") as handle:
        assert not [r for r in csv.DictReader(handle) if r["metric"].startswith("bertscore")]


def test_umls_f1_is_not_computed_and_says_why(tmp_path):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    assert run_cli(project, "run", "--pair", "test", "--task", "medisumqa", "--engine", "fake", "--quiet", "--limit",
                   "2", "--models-dir", str(tmp_path / "models"), "--out", str(out)) == 0
    assert all(r["n"] == "0" for r in results(out, "umls_f1"))
    assert "umls_f1 not computed: UMLS-F1 needs the UMLS licence" in (out / "report.md").read_text()


@pytest.mark.real_model
def test_a_small_encoder_gguf_scores_once_and_the_report_reads_the_cache(tmp_path):
    """The encoder is a real GGUF run by llama.cpp (the answers are the fake engine's): its scores land in the run
    directory, a second pass finds them all there, `edgeeval report` gives them without the encoder, and each is
    BERTScore of the encoder's own per-token vectors."""
    project_dir = make_project(tmp_path, ENCODER_TOML.replace('[scoring]\nbertscore_model = "tiny-bert"\n', ""))
    encoder = write_tiny_bert(tmp_path / "models" / "bert.gguf")
    out = tmp_path / "run"
    assert fake_run(project_dir, out) == 0  # no encoder named yet: not computed
    (project_dir / "models.toml").write_text(ENCODER_TOML)
    project = load_models_config(project_dir / "models.toml", models_dir=str(tmp_path / "models"))
    llama = EngineSettings(n_threads=1)
    status = score_run(project, out, llama, WorkerEngine, progress=False)
    assert status["computed"] and status["architecture"] == "bert" and status["backend"] == "llama"
    lines = (out / BERTSCORE_FILE).read_text().splitlines()
    assert len(lines) == 8 and all(0.0 < json.loads(line)["f1"] <= 1.0 for line in lines)  # 4 answers per model
    assert score_run(project, out, llama, WorkerEngine, progress=False)["computed"]
    assert (out / BERTSCORE_FILE).read_text().splitlines() == lines  # all cached: nothing recomputed

    encoder.rename(tmp_path / "elsewhere.gguf")  # the report never runs a model
    assert run_cli(project_dir, "report", str(out)) == 0
    cached = [json.loads(line) for line in lines]
    for row in results(out, "bertscore_f1"):
        mine = [c["f1"] for c in cached if c["model"] == row["model"]]
        assert float(row["value"]) == pytest.approx(sum(mine) / len(mine)) and row["n"] == "4"

    from edgeeval.run.store import load_records

    entry = cached[0]
    record = next(r for r in load_records(out, entry["model"], "meqsum") if r.example_id == entry["example_id"])
    engine = WorkerEngine(tmp_path / "elsewhere.gguf",
                          EngineSettings(n_ctx=512, n_batch=512, n_ubatch=512, embeddings_only=True, n_threads=1))
    try:
        cand, ref = engine.token_embeddings([record.output.strip(), record.gold])
    finally:
        engine.close()
    np.testing.assert_allclose(bertscore(cand, ref), (entry["precision"], entry["recall"], entry["f1"]), rtol=1e-6)


def test_the_encoder_must_be_a_plain_model_entry(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text(ENCODER_TOML.replace('bertscore_model = "tiny-bert"', 'bertscore_model = "no-such-model"'))
    from edgeeval.errors import ConfigError

    with pytest.raises(ConfigError, match="scoring.bertscore_model 'no-such-model' is not a plain model entry"):
        load_models_config(config)


def test_score_run_without_bertscore_tasks_does_nothing(tmp_path):
    project_dir = make_project(tmp_path)
    out = tmp_path / "run"
    assert run_cli(project_dir, "run", "--pair", "test", "--task", "mednli", "--engine", "fake", "--quiet",
                   "--limit", "2", "--models-dir", str(tmp_path / "models"), "--out", str(out)) == 0
    project = load_models_config(project_dir / "models.toml", models_dir=str(tmp_path / "models"))
    assert score_run(project, out, EngineSettings(backend="fake"), WorkerEngine) is None
    assert not (out / BERTSCORE_FILE).exists()


@pytest.mark.real_model
def test_an_encoder_cut_to_its_first_layers_is_the_smaller_encoder(tmp_path):
    """scripts/encoder_layers.py keeps the first N layers (bert-score reads a model's layer N; llama.cpp gives the
    last): a 2-layer encoder cut to 1 gives, token by token, the vectors of the 1-layer encoder with the same
    weights, and the vectors differ from the uncut model's."""
    root = Path(__file__).resolve().parent.parent
    two, one = write_tiny_bert(tmp_path / "two.gguf"), write_tiny_bert(tmp_path / "one.gguf", n_layer=1)
    cut = tmp_path / "cut.gguf"
    done = subprocess.run([sys.executable, str(root / "scripts" / "encoder_layers.py"), str(two), str(cut), "--layers",
                           "1"], capture_output=True, text=True)
    assert done.returncode == 0 and "1 of 2 layers" in done.stdout, done.stderr
    texts = ["fever and cough", "the patient has renal failure"]
    vectors = {}
    for name, path in (("two", two), ("one", one), ("cut", cut)):
        engine = WorkerEngine(path, EngineSettings(n_ctx=512, n_batch=512, n_ubatch=512, embeddings_only=True,
                                                   n_threads=1))
        try:
            vectors[name] = engine.token_embeddings(texts)
        finally:
            engine.close()
    for cut_text, one_text, two_text in zip(vectors["cut"], vectors["one"], vectors["two"]):
        assert cut_text["tokens"] == one_text["tokens"] == two_text["tokens"]
        np.testing.assert_allclose(cut_text["vectors"], one_text["vectors"], rtol=0, atol=1e-6)
        assert np.abs(np.asarray(cut_text["vectors"]) - np.asarray(two_text["vectors"])).max() > 0.1
    again = subprocess.run([sys.executable, str(root / "scripts" / "encoder_layers.py"), str(two), str(cut), "--layers",
                            "1"], capture_output=True, text=True)
    assert again.returncode != 0 and "exists already" in again.stderr  # never overwrites a file
    too_many = subprocess.run([sys.executable, str(root / "scripts" / "encoder_layers.py"), str(two),
                               str(tmp_path / "x.gguf"), "--layers", "3"], capture_output=True, text=True)
    assert too_many.returncode != 0 and "has 2 layers; --layers must be 1 to 2" in too_many.stderr
