"""The retrieval arm: a model entry plus passages from a local corpus, run, recorded and reported beside the
plain model and the fine-tune; BM25 index, cache, prompt fitting, leakage guard and bad input."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgeeval.config.models import load_models_config
from edgeeval.engine import EngineSettings
from edgeeval.engine.fake import FakeModel
from edgeeval.prompting.token_budget import TokenCounter
from edgeeval.retrieval.corpus import Passage, load_passages
from edgeeval.retrieval.index import open_bm25, tokenize
from edgeeval.retrieval.leakage import is_near_duplicate
from edgeeval.run.planning import plan_units, prepare_model, prepare_task
from edgeeval.run.store import read_records

from cli_support import run_cli
from conftest import FAKE_MODELS_TOML, LLAMA_THREADS, ROOT, make_project

N_SAMPLE = 36
CORPUS = ROOT / "benchmarks" / "clinical" / "corpus"

RAG_TOML = FAKE_MODELS_TOML + """
[models.general-rag]
base_model = "general-small"
[models.general-rag.retrieval]
corpus = "corpus"
k = 3
passage_tokens = 600

[pairs.rag-vs-general]
baseline = "general-small"
candidate = "general-rag"

[pairs.rag-vs-bio]
baseline = "bio-small"
candidate = "general-rag"
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEVAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "retrieval"


@pytest.fixture
def rag_project(tmp_path) -> Path:
    """A project whose general model also runs as a retrieval arm over a copy of the bundled corpus."""
    project = make_project(tmp_path, RAG_TOML)
    import shutil

    shutil.copytree(CORPUS, project / "corpus")
    return project


def rag_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--task", "case_challenges", "--engine", "fake", "--models-dir",
                   str(project.parent / "models"), "--out", str(out), "--quiet", *extra)


def write_corpus(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


SMALL = {
    "mi.md": "# Right ventricular infarction\nInferior infarction with right ventricular involvement needs fluids; "
             "nitrates lower preload and can cause collapse.",
    "copd.txt": "COPD maintenance: add an inhaled corticosteroid when exacerbations continue and eosinophils are high.",
    "gout.md": "# Gout\nNeedle-shaped negatively birefringent crystals in joint fluid are diagnostic of gout.",
    "pseudo.md": "# Pseudogout\nRhomboid positively birefringent calcium pyrophosphate crystals; chondrocalcinosis.",
}


# --- index ---------------------------------------------------------------------------------------------


def test_bm25_results_equal_a_direct_bm25s_call(tmp_path):
    import bm25s

    corpus = write_corpus(tmp_path / "c", SMALL)
    index = open_bm25(corpus, 150, 30, progress=False)
    passages = load_passages(corpus, 150, 30)
    direct = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    direct.index(bm25s.tokenize([f"{p.title}\n{p.text}" for p in passages], stopwords="en", show_progress=False),
                 show_progress=False)
    for query in ("crystals in the knee joint fluid", "right ventricular infarction fluids", "eosinophils COPD"):
        ids, scores = direct.retrieve(tokenize([query]), k=3, show_progress=False)
        expected = [(passages[i].id, float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
        got = [(h.passage.id, h.score) for h in index.search(query, 3)]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[1] for g in got] == pytest.approx([e[1] for e in expected])
        assert [h.rank for h in index.search(query, 3)] == list(range(1, len(got) + 1))
    assert index.search("zebra xylophone", 3) == []


def test_index_is_reused_when_nothing_changed_and_rebuilt_when_one_file_changed(tmp_path, private_cache):
    corpus = write_corpus(tmp_path / "c", SMALL)
    first = open_bm25(corpus, 150, 30, progress=False)
    again = open_bm25(corpus, 150, 30, progress=False)
    assert first.built and not again.built and again.key == first.key
    assert again.search("gout crystals", 1)[0].passage.id == "gout.md"
    (corpus / "gout.md").write_text("# Gout\nUrate crystals, now with colchicine for flares.", encoding="utf-8")
    changed = open_bm25(corpus, 150, 30, progress=False)
    assert changed.built and changed.key != first.key
    assert "colchicine" in changed.search("colchicine", 1)[0].passage.text
    other_chunks = open_bm25(corpus, 100, 10, progress=False)
    assert other_chunks.built and other_chunks.key != changed.key
    # The cache may hold patient text: owner-only, folders and files.
    for path in [private_cache, *private_cache.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_documents_are_chunked_with_overlap_and_jsonl_corpora_read_like_medrag(tmp_path):
    words = " ".join(f"w{i}" for i in range(300))
    passages = load_passages(write_corpus(tmp_path / "c", {"long.txt": words}), 120, 20)
    assert [p.id for p in passages] == ["long.txt#0", "long.txt#1", "long.txt#2"]
    assert passages[0].text.split()[-20:] == passages[1].text.split()[:20]
    lines = [{"id": "StatPearls_1", "title": "Gout", "content": "Urate crystals are needle shaped."},
             {"id": "StatPearls_2", "title": "Pseudogout", "text": "Calcium pyrophosphate crystals are rhomboid."}]
    jsonl = tmp_path / "textbook.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    passages = load_passages(jsonl, 150, 30)
    assert passages == [Passage("StatPearls_1", "textbook.jsonl", "Gout", "Urate crystals are needle shaped."),
                        Passage("StatPearls_2", "textbook.jsonl", "Pseudogout", "Calcium pyrophosphate crystals are rhomboid.")]
    assert open_bm25(jsonl, 150, 30, progress=False).search("rhomboid", 1)[0].passage.id == "StatPearls_2"


# --- prompts -------------------------------------------------------------------------------------------


def plan(project: Path, model: str, task: str = "case_challenges", mode: str = "generate"):
    config = load_models_config(project / "models.toml", str(project.parent / "models"))
    words = TokenCounter(FakeModel("fake.gguf", EngineSettings()))  # the fake models' tokenizer: a word a token
    return plan_units(prepare_model(config, model), prepare_task(config, task, None, None, mode=mode), words)[0]


def test_passages_come_before_the_question_and_only_in_its_turn(rag_project):
    units = plan(rag_project, "general-rag")
    first = units[0]
    assert first.retrieval["passages"][0]["source"] == "cardiology/right_ventricular_infarction.md"
    user = first.prompt.split("<|im_start|>user\n", 1)[1]
    assert user.index("Reference passages") < user.index("Right ventricular infarction") < user.index("A 58-year-old")
    assert first.prompt_hash != plan(rag_project, "general-small")[0].prompt_hash
    # A task with few-shot turns: the passages go to the question's turn only.
    mednli = plan(rag_project, "general-rag", "mednli")
    assert all(u.prompt.count("Reference passages") == 1 for u in mednli if u.retrieval["passages"])
    assert all(u.prompt.rindex("<|im_start|>user") < u.prompt.index("Reference passages")
               for u in mednli if u.retrieval["passages"])


def test_the_prompt_never_loses_the_question_to_passages(tmp_path):
    # Long passages and a small window: passages are dropped or cut, the question and options never are.
    toml = RAG_TOML.replace("k = 3\npassage_tokens = 600", "k = 5\npassage_tokens = 1000")
    toml = toml.replace('base_model = "general-small"', 'base_model = "general-small"\nn_ctx = 1200')
    project = make_project(tmp_path, toml)
    long_note = " ".join(["Right ventricular infarction needs fluids and careful preload management."] * 60)
    write_corpus(project / "corpus", {f"note{i}.md": f"# Note {i}\n{long_note} {i}" for i in range(6)})
    units = plan(project, "general-rag")
    with open(ROOT / "benchmarks/clinical/data/case_challenges_sample.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for unit, row in zip(units, rows):
        assert row["question"] in unit.prompt
        for column in ("opa", "opb", "opc", "opd"):
            assert row[column] in unit.prompt
        assert len(unit.prompt) / 3.0 <= 1200 - 128  # the estimate the policy uses fits the window
    audit = units[0].retrieval
    assert audit["dropped_for_context"] + (audit["trimmed_chars"] > 0) > 0
    assert len(audit["passages"]) >= 1


def test_loglik_mode_reads_the_passages_too(rag_project, tmp_path):
    out = tmp_path / "run"
    assert rag_run(rag_project, out, "--pair", "rag-vs-general", "--mode", "loglik") == 0
    recs = read_records(out / "records" / "general-rag" / "case_challenges@loglik.jsonl")
    assert len(recs) == N_SAMPLE and all(r.mode == "loglik" and r.scores for r in recs)
    assert all(r.retrieval and "Reference passages" in r.prompt for r in recs)
    assert all(r.prompt.endswith("The answer is ") for r in recs)


# --- leakage guard -------------------------------------------------------------------------------------


def test_leakage_guard_finds_planted_duplicates_and_excludes_them_on_request(rag_project, tmp_path):
    with open(ROOT / "benchmarks/clinical/data/case_challenges_sample.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    planted = {"cc-004", "cc-017", "cc-030"}
    leaked = [{"id": f"copy-{r['id']}", "title": "Case", "text": f"Seen before: {r['question']} Answer: {r['answer']}"}
              for r in rows if r["id"] in planted]
    (rag_project / "corpus" / "leaked.jsonl").write_text("\n".join(json.dumps(x) for x in leaked) + "\n")
    units = plan(rag_project, "general-rag")
    assert {u.example.id for u in units if u.retrieval["leaked"]} == planted
    assert all(u.retrieval["passages"][0]["id"] == f"copy-{u.example.id}" for u in units if u.example.id in planted)
    out = tmp_path / "run"
    assert rag_run(rag_project, out, "--pair", "rag-vs-general") == 0
    assert "3 of 36 items appear in the corpus" in (out / "report.md").read_text()

    toml = (rag_project / "models.toml").read_text().replace("k = 3\n", "k = 3\nexclude_leaks = true\n")
    (rag_project / "models.toml").write_text(toml)
    units = plan(rag_project, "general-rag")
    for unit in units:
        shown = {p["id"] for p in unit.retrieval["passages"]}
        assert not shown & set(unit.retrieval["leaked"])
        assert unit.retrieval["excluded"] == (1 if unit.example.id in planted else 0)


def test_no_false_leaks_on_the_bundled_sample_and_corpus(rag_project):
    units = plan(rag_project, "general-rag")
    assert [u.example.id for u in units if u.retrieval["leaked"]] == []
    # ...although the corpus answers them: the best passage is on the case's topic for most items.
    on_topic = sum(u.retrieval["passages"][0]["score"] > 5 for u in units)
    assert on_topic >= 30


def test_near_duplicates_need_more_than_a_stock_phrase():
    question = "What is the most appropriate next step in management of this patient with fever and a rash?"
    assert is_near_duplicate(question, "Case: " + question.lower() + " Answer: B", 0.5)
    assert not is_near_duplicate(question, "The most appropriate next step in management is observation.", 0.5)


# --- three arms, two pairs -----------------------------------------------------------------------------


def test_three_arms_give_both_pairs_with_holm_across_them(rag_project, tmp_path, capsys):
    out = tmp_path / "run"
    assert rag_run(rag_project, out, "--pair", "rag-vs-general", "--pair", "rag-vs-bio") == 0
    printed = capsys.readouterr().out
    assert f"rag-vs-bio: {N_SAMPLE} examples generated, {N_SAMPLE} already done" in printed  # the shared arm ran once
    assert len(read_records(out / "records" / "general-rag" / "case_challenges.jsonl")) == N_SAMPLE
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["pairs"]) == {"rag-vs-general", "rag-vs-bio"}
    assert manifest["models"]["general-rag"]["retrieval"]["corpus_sha256"]
    assert manifest["models"]["general-rag"]["base_model"] == "general-small"
    with open(out / "comparison.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["metric"] == "accuracy"]
    assert {r["pair"] for r in rows} == {"rag-vs-general", "rag-vs-bio"}
    from edgeeval.scoring.stats import holm

    expected = holm([float(r["p_value"]) for r in rows])
    assert [float(r["p_holm"]) for r in rows] == pytest.approx(expected)
    report = (out / "report.md").read_text()
    assert "all 2 pairs together" in report and "## Retrieval" in report
    html = (out / "report.html").read_text()
    assert "passages general-rag saw: cardiology/" in html or "passages general-rag saw:" in html
    # Running the pairs again, one command each into the same directory, does nothing new.
    assert rag_run(rag_project, out, "--pair", "rag-vs-bio") == 0
    assert f"0 examples generated, {2 * N_SAMPLE} already done" in capsys.readouterr().out


def test_old_records_without_retrieval_stay_valid(tmp_path):
    from edgeeval.run.store import Record

    line = {"model": "m", "model_sha256": "s", "task": "t", "task_hash": "h", "example_id": "e", "prompt_hash": "p",
            "prompt": "q", "gold": "A", "output": "A"}
    assert Record.model_validate(line).retrieval is None


# --- bad input -----------------------------------------------------------------------------------------


def one_line_error(project: Path, out: Path, capsys) -> str:
    assert rag_run(project, out, "--pair", "rag-vs-general") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeeval: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_an_empty_corpus_is_one_line_naming_it(rag_project, tmp_path, capsys):
    import shutil

    shutil.rmtree(rag_project / "corpus")
    (rag_project / "corpus").mkdir()
    (rag_project / "corpus" / "notes.pdf").write_bytes(b"%PDF")
    assert "empty corpus" in one_line_error(rag_project, tmp_path / "run", capsys)
    shutil.rmtree(rag_project / "corpus")
    assert "corpus not found" in one_line_error(rag_project, tmp_path / "run", capsys)


def test_unreadable_corpus_files_name_file_and_line_but_never_the_text(rag_project, tmp_path, capsys):
    secret = "Patient Jane Roe, MRN 0042, admitted with chest pain"
    bad = rag_project / "corpus" / "ward.txt"
    bad.write_bytes(secret.encode() + b"\xff\xfe broken")
    err = one_line_error(rag_project, tmp_path / "run", capsys)
    assert "ward.txt:1" in err and "not UTF-8" in err and "Jane" not in err
    bad.unlink()
    notes = rag_project / "corpus" / "notes.jsonl"
    notes.write_text(json.dumps({"id": "n1", "text": secret}) + "\n" + json.dumps({"id": "n2", "title": secret}) + "\n")
    err = one_line_error(rag_project, tmp_path / "run", capsys)
    assert "notes.jsonl:2" in err and "'text' or 'content'" in err and "Jane" not in err
    notes.write_text(json.dumps({"id": "n1", "text": secret}) + "\n{not json " + secret + "\n")
    err = one_line_error(rag_project, tmp_path / "run", capsys)
    assert "notes.jsonl:2" in err and "invalid JSON" in err and "Jane" not in err


def test_a_passage_budget_larger_than_the_window_is_refused(rag_project, tmp_path, capsys):
    toml = (rag_project / "models.toml").read_text().replace("passage_tokens = 600", "passage_tokens = 9000")
    (rag_project / "models.toml").write_text(toml)
    err = one_line_error(rag_project, tmp_path / "run", capsys)
    assert "retrieval.passage_tokens (9000)" in err and "general-rag" in err and "n_ctx (4096)" in err
    # Within models.toml's n_ctx but above the file's own window (the tiny GGUFs say 2048): refused too.
    (rag_project / "models.toml").write_text(toml.replace("passage_tokens = 9000", "passage_tokens = 3000"))
    err = one_line_error(rag_project, tmp_path / "run", capsys)
    assert "retrieval.passage_tokens (3000)" in err and "context window (2048 tokens)" in err


@pytest.mark.parametrize("change, expected", [
    ('base_model = "general-small"', "base_model 'nope', which is not a model"),
    ("k = 3", "unknown key 'models.general-rag.retrieval.kk'"),
    ("passage_tokens = 600", "chunk_overlap (30) must be smaller than chunk_words (20)"),
])
def test_bad_retrieval_config_is_one_line(rag_project, tmp_path, capsys, change, expected):
    replacement = {'base_model = "general-small"': 'base_model = "nope"', "k = 3": "kk = 3",
                   "passage_tokens = 600": "passage_tokens = 600\nchunk_words = 20"}[change]
    toml = (rag_project / "models.toml").read_text().replace(change, replacement)
    (rag_project / "models.toml").write_text(toml)
    assert expected in one_line_error(rag_project, tmp_path / "run", capsys)


# --- the real demo -------------------------------------------------------------------------------------


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.real_model
def test_real_demo_with_retrieval_runs_offline(real_models, tmp_path):
    """Three arms on the real small models in a network namespace with no interface."""
    prefix = ["unshare", "-n"] if unshare_works() else []
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEEVAL_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([*prefix, sys.executable, "-m", "edgeeval.cli", "demo", "--retrieval", "--out", str(out),
                             "--limit", "3", "--max-tokens", "8", "--quiet", "--threads", str(LLAMA_THREADS)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr
    for model in ("gemma3-270m", "smollm2-135m-instruct", "smollm2-135m-rag"):
        recs = read_records(out / "records" / model / "case_challenges.jsonl")
        assert len(recs) == 3 and all(r.error is None for r in recs)
    rag = read_records(out / "records" / "smollm2-135m-rag" / "case_challenges.jsonl")
    assert all(r.retrieval["passages"] for r in rag)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["pairs"]) == {"demo", "demo-rag", "demo-rag-vs-gemma"}


# --- the embedding retriever ---------------------------------------------------------------------------

EMBEDDING = 'k = 3\nretriever = "embedding"\nembedding_model = "general-small"\n'


def test_embedding_index_ranks_by_cosine_and_is_cached_like_bm25(tmp_path, private_cache):
    """On the fake engine (bag-of-words vectors): the passage that shares the query's words comes first; the
    index is reused when nothing changed and rebuilt when a file, the chunking or the model changed."""
    import numpy as np

    from edgeeval.engine import EngineSettings
    from edgeeval.retrieval.embedding import open_embedding

    from conftest import write_tiny_gguf

    corpus = write_corpus(tmp_path / "c", SMALL)
    model = write_tiny_gguf(tmp_path / "embedder.gguf", "embedder")
    fake = EngineSettings(backend="fake", n_threads=1)
    first = open_embedding(corpus, 150, 30, model, "a" * 64, fake, progress=False)
    try:
        assert first.built and first.vectors.shape[0] == len(first.passages) == len(SMALL)
        assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-6)
        hits = first.search("negatively birefringent needle crystals of gout", 4)
        assert hits[0].passage.id == "gout.md" and [h.rank for h in hits] == [1, 2, 3, 4]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        first.close()  # the worker stops; a search starts it again
        assert first.search("negatively birefringent needle crystals of gout", 1)[0].passage.id == "gout.md"
    finally:
        first.close()
    again = open_embedding(corpus, 150, 30, model, "a" * 64, fake, progress=False)
    assert not again.built and again.key == first.key and np.array_equal(again.vectors, first.vectors)
    assert again.search("inhaled corticosteroid eosinophils", 1)[0].passage.id == "copd.txt"
    again.close()
    assert open_embedding(corpus, 150, 30, model, "b" * 64, fake, progress=False).key != first.key
    (corpus / "gout.md").write_text("# Gout\nUrate crystals, now with colchicine for flares.", encoding="utf-8")
    changed = open_embedding(corpus, 150, 30, model, "a" * 64, fake, progress=False)
    assert changed.built and changed.key != first.key
    changed.close()
    for path in [private_cache, *private_cache.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_an_embedding_arm_runs_and_records_its_passages(rag_project, tmp_path):
    toml = (rag_project / "models.toml").read_text().replace("k = 3\n", EMBEDDING)
    (rag_project / "models.toml").write_text(toml)
    out = tmp_path / "run"
    assert rag_run(rag_project, out, "--pair", "rag-vs-general") == 0
    records = read_records(out / "records" / "general-rag" / "case_challenges.jsonl")
    assert len(records) == N_SAMPLE and all(r.retrieval["passages"] for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["general-rag"]["retrieval"]["retriever"] == "embedding"
    # Same prompts again: the index comes from the cache and nothing is redone.
    assert rag_run(rag_project, out, "--pair", "rag-vs-general") == 0
    assert len(read_records(out / "records" / "general-rag" / "case_challenges.jsonl")) == N_SAMPLE


@pytest.mark.parametrize("change, expected", [
    (EMBEDDING.replace('"general-small"', '"nope"'), "retrieval.embedding_model 'nope' is not a model in this file"),
    (EMBEDDING.replace('"general-small"', '"general-rag"'), "is itself a retrieval entry; name the plain model"),
    ('k = 3\nembedding_model = "general-small"\n', "'embedding_model' applies to retriever 'embedding' only"),
])
def test_bad_embedding_retriever_config_is_one_line(rag_project, tmp_path, capsys, change, expected):
    toml = (rag_project / "models.toml").read_text().replace("k = 3\n", change)
    (rag_project / "models.toml").write_text(toml)
    assert expected in one_line_error(rag_project, tmp_path / "run", capsys)


def test_an_embedding_model_that_is_not_a_gguf_is_named(rag_project, tmp_path, capsys):
    toml = (rag_project / "models.toml").read_text().replace("k = 3\n", EMBEDDING.replace("general-small", "embedder"))
    (rag_project / "models.toml").write_text(toml + '\n[models.embedder]\npath = "embedder.gguf"\nsource = "test"\nfamily = "general"\n')
    (tmp_path / "models" / "embedder.gguf").write_bytes(b"not a gguf at all")
    err = one_line_error(rag_project, tmp_path / "run", capsys)
    assert "embedder.gguf" in err


@pytest.mark.real_model
def test_the_embedding_retriever_runs_on_a_bundled_model(real_models, tmp_path):
    """SmolLM2 embeds (mean-pooled, unit length) a part of the bundled corpus in a worker: every passage's own
    text finds that passage first, and the vectors are the same when the index is built again."""
    import shutil

    import numpy as np

    from edgeeval.engine import EngineSettings
    from edgeeval.retrieval.embedding import open_embedding

    corpus = tmp_path / "corpus"
    for note in sorted(CORPUS.rglob("*.md"))[:6]:
        target = corpus / note.relative_to(CORPUS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(note, target)
    settings = EngineSettings(n_threads=LLAMA_THREADS)
    index = open_embedding(corpus, 150, 30, real_models["smollm2"], "smollm2", settings, progress=False)
    try:
        assert index.built and index.vectors.shape == (len(index.passages), 576)
        assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
        for passage in index.passages[::2]:
            assert index.search(f"{passage.title}\n{passage.text}" if passage.title else passage.text, 1)[0].passage.id \
                == passage.id
    finally:
        index.close()
    rebuilt = open_embedding(corpus, 150, 30, real_models["smollm2"], "smollm2", settings, progress=False,
                             cache=tmp_path / "other-cache")
    rebuilt.close()
    assert rebuilt.built and np.allclose(rebuilt.vectors, index.vectors, atol=1e-5)


def test_a_task_template_may_place_the_passages_itself(rag_project):
    (rag_project / "prompts" / "case_challenge.j2").write_text(
        "{% if passages is defined %}{% for p in passages %}<<{{ p.id }}>> {{ p.text }}\n{% endfor %}{% endif %}"
        "{{ question }}\n{% for letter, text in options.items() %}{{ letter }}. {{ text }}\n{% endfor %}")
    rag = plan(rag_project, "general-rag")[0]
    assert "<<cardiology/right_ventricular_infarction.md>>" in rag.prompt and "Reference passages" not in rag.prompt
    plain = plan(rag_project, "general-small")[0]
    assert "<<" not in plain.prompt and "A 58-year-old" in plain.prompt
