"""Tasks that ask each item several times (`repeats`, LongHealth's shuffles and fresh distractors as CLUE does):
each repetition its own unit and record, resumable; scores averaged per item before any paired test; the spread
across repetitions in the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from edgeeval.config.tasks import load_task, task_hash
from edgeeval.data.longhealth import DocumentSelection, load_longhealth
from edgeeval.run.store import read_records
from edgeeval.scoring.metrics import compare_pair, per_item_means, repetition_spread, summarize

from cli_support import run_cli
from conftest import ROOT, make_project

SAMPLE = ROOT / "benchmarks" / "clinical" / "data" / "longhealth_sample.json"


def fake_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--pair", "test", "--task", "longhealth_t1", "--engine", "fake", "--quiet",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), *extra)


def test_each_repetition_is_a_unit_of_its_own_and_a_run_resumes_them(tmp_path, capsys):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    assert fake_run(project, out, "--limit", "2") == 0
    records = read_records(out / "records" / "bio-small" / "longhealth_t1.jsonl")
    assert sorted((r.example_id, r.repeat) for r in records) == [(i, r) for i in ("patient_01-q1", "patient_01-q2")
                                                                 for r in range(5)]
    for item in ("patient_01-q1", "patient_01-q2"):  # five repetitions, five document orders
        assert len({r.prompt_hash for r in records if r.example_id == item}) == 5
    capsys.readouterr()
    assert fake_run(project, out, "--limit", "3") == 0
    # Both models: the third item's 5 repetitions each generated, the first two items' 10 each already done.
    assert "10 examples generated, 20 already done" in capsys.readouterr().out
    with open(out / "results.csv", newline="") as handle:
        accuracy = [r for r in csv.DictReader(handle) if r["metric"] == "accuracy" and r["task"] == "longhealth_t1"]
    assert accuracy and all(r["n"] == "3" for r in accuracy)  # items, each the mean of its 5 repetitions
    report = (out / "report.md").read_text()
    assert "Each item was asked 5 times; the figures above are per-item means" in report


def scored_frame(flags: dict[str, list[list[int]]]) -> pl.DataFrame:
    """model -> per item, the correctness of each repetition."""
    rows = [{"model": model, "task": "t", "example_id": f"e{i}", "repeat": r, "gold": "A", "parsed": "A" if ok else "B",
             "error": None, "kind": "multiple_choice", "metrics": "accuracy", "correct": bool(ok), "invalid": False,
             "errored": False}
            for model, items in flags.items() for i, item in enumerate(items) for r, ok in enumerate(item)]
    return pl.DataFrame(rows)


def test_scores_are_averaged_per_item_before_the_paired_test():
    scored = scored_frame({"base": [[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 0, 1]],
                           "cand": [[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]]})
    items = per_item_means(scored)
    assert items.height == 8 and items.filter(pl.col("model") == "base")["correct"].to_list() == \
        pytest.approx([1, 0, 1, 2 / 3])
    results = {(r["model"], r["metric"]): r for r in summarize(scored).iter_rows(named=True)}
    assert results["base", "accuracy"]["value"] == pytest.approx((1 + 0 + 1 + 2 / 3) / 4)
    assert results["base", "accuracy"]["n"] == 4
    row = compare_pair(scored, "p", "base", "cand").row(0, named=True)
    # Per-item means are not yes/no flags, so McNemar gives way to the paired permutation test.
    assert row["test"] == "paired_permutation" and row["n_paired"] == 4
    assert row["delta"] == pytest.approx((1 / 3 + 0 + 1 / 3 + 0) / 4 - (1 + 0 + 1 + 2 / 3) / 4)


def test_the_spread_across_repetitions_is_each_repetition_on_its_own():
    scored = scored_frame({"base": [[1, 1, 0], [0, 1, 0]]})
    spread = repetition_spread(scored).row(0, named=True)
    # repetition 0: 1/2, repetition 1: 2/2, repetition 2: 0/2
    assert (spread["repeats"], spread["min"], spread["max"]) == (3, 0.0, 1.0)
    assert spread["mean"] == pytest.approx(0.5) and spread["sd"] == pytest.approx(0.5)


def test_items_asked_once_pass_unchanged():
    scored = scored_frame({"base": [[1], [0]]}).with_columns(repeat=pl.lit(None, pl.Int64))
    assert per_item_means(scored).equals(scored) and repetition_spread(scored).height == 0


def test_repeats_need_a_format_that_varies_an_item(tmp_path):
    from edgeeval.config.tasks import load_task
    from edgeeval.errors import ConfigError

    from conftest import ROOT

    text = (ROOT / "benchmarks/clinical/mednli.toml").read_text().replace('answer_rule = "clue"',
                                                                           'answer_rule = "clue"\nrepeats = 3')
    (tmp_path / "mednli.toml").write_text(text)
    with pytest.raises(ConfigError, match="format 'mednli' asks an item the same way every time"):
        load_task(tmp_path / "mednli.toml")


def test_each_task1_repetition_shows_the_patients_documents_in_an_order_of_its_own():
    """CLUE's five shuffles of task 1: every question of the bundled sample (three documents a patient, so six
    orders) is asked five times, each time in another order, always with all of its patient's documents."""
    examples = load_longhealth(SAMPLE, DocumentSelection("patient"), repeats=5)
    by_item: dict[str, list] = {}
    for example in examples:
        by_item.setdefault(example.id, []).append(example)
    assert len(by_item) == 10 and all(len(reps) == 5 for reps in by_item.values())
    for reps in by_item.values():
        orders = [tuple(d["text"] for d in r.fields["documents"]) for r in reps]
        assert len(set(orders)) == 5
        assert len({frozenset(order) for order in orders}) == 1  # the same documents, reordered
    # Without repetitions the loader shows what it always showed: repetition draws leave a single asking alone.
    once = load_longhealth(SAMPLE, DocumentSelection("patient"))
    assert [e.repeat for e in once] == [None] * 10


def test_with_fewer_orders_than_repetitions_some_repeat(tmp_path):
    """Two documents have two orders: five repetitions show both, and then repeat them (no endless redrawing)."""
    data = json.loads(SAMPLE.read_text())
    key = next(iter(data))
    patient = data[key]
    first_two = dict(list(patient["texts"].items())[:2])
    questions = [dict(q, answer_location={k: v for k, v in (q.get("answer_location") or {}).items() if k in first_two})
                 for q in patient["questions"][:1]]
    path = tmp_path / "two.json"
    path.write_text(json.dumps({key: {"texts": first_two, "questions": questions}}))
    reps = load_longhealth(path, DocumentSelection("patient"), repeats=5)
    assert len({tuple(d["text"] for d in r.fields["documents"]) for r in reps}) == 2


def shown(example) -> tuple[str, ...]:
    return tuple(d["text"] for d in example.fields["documents"])


@pytest.mark.parametrize("documents", ["patient", "answer_and_distractors", "distractors_only"])
def test_patient_order_shows_a_patients_questions_the_same_documents_in_each_repetition(documents):
    """document_order = "patient": one seeded order, with one set of distractors, per patient and repetition, so a
    patient's questions share their documents as a prompt prefix; the repetitions still differ."""
    unanswerable = "None of the above" if documents == "distractors_only" else None
    selection = DocumentSelection(documents, 3, unanswerable, order="patient")
    examples = load_longhealth(SAMPLE, selection, repeats=5)
    patients: dict[tuple[str, int], set] = {}
    for example in examples:
        patient = example.id.rsplit("-q", 1)[0]
        patients.setdefault((patient, example.repeat), set()).add(
            shown(example) if documents != "answer_and_distractors" else
            tuple(d["text"] for d in example.fields["documents"] if d["rank"] >= 1))  # the distractors (and order)
    if documents != "answer_and_distractors":
        assert all(len(orders) == 1 for orders in patients.values())  # every question of the patient: the same
    per_patient: dict[str, set] = {}
    for (patient, _), orders in patients.items():
        per_patient.setdefault(patient, set()).update(orders)
    assert all(len(orders) > 1 for orders in per_patient.values())  # the repetitions differ


def test_question_order_stays_clue_s_and_the_task_hash_stays_where_it_was():
    by_question = load_longhealth(SAMPLE, DocumentSelection("patient"), repeats=5)
    explicit = load_longhealth(SAMPLE, DocumentSelection("patient", order="question"), repeats=5)
    assert [shown(e) for e in by_question] == [shown(e) for e in explicit]
    first = [e for e in by_question if e.repeat == 0]
    same_patient = [e for e in first if e.id.startswith(first[0].id.rsplit("-q", 1)[0] + "-q")]
    assert len({shown(e) for e in same_patient}) > 1  # CLUE: each question its own order
    spec = load_task(ROOT / "benchmarks" / "clinical" / "longhealth_t1.toml")
    default = task_hash(spec, "t", "d")

    def ordered(order: str) -> str:
        return task_hash(spec.model_copy(update={"data": spec.data.model_copy(update={"document_order": order})}), "t", "d")
    # The default leaves the hash as it was before the key existed (recorded runs stay current); "patient" is new.
    assert ordered("question") == default and ordered("patient") != default


def test_patient_order_is_a_task_setting_recorded_in_the_manifest(tmp_path):
    project = make_project(tmp_path)
    toml = project / "benchmarks" / "clinical" / "longhealth_t1.toml"
    toml.write_text(toml.read_text().replace('documents = "patient"', 'documents = "patient"\ndocument_order = "patient"'))
    out = tmp_path / "run"
    assert fake_run(project, out, "--limit", "2") == 0
    entry = json.loads((out / "manifest.json").read_text())["tasks"]["longhealth_t1"]
    assert entry["document_order"] == "patient"
    records = read_records(out / "records" / "bio-small" / "longhealth_t1.jsonl")
    for repeat in range(5):  # both questions of the patient: the same documents before the question
        prompts = [r.prompt for r in records if r.repeat == repeat]
        assert len(prompts) == 2 and prompts[0].split("END DOCUMENTS")[0] == prompts[1].split("END DOCUMENTS")[0]
    assert "documents ordered per patient" in (out / "report.md").read_text()
    (project / "benchmarks" / "clinical" / "medqa.toml").write_text(
        (project / "benchmarks" / "clinical" / "medqa.toml").read_text().replace('format = "multiple_choice"',
                                                                                  'format = "multiple_choice"\ndocument_order = "patient"'))
    with pytest.raises(Exception, match="document_order"):
        load_task(project / "benchmarks" / "clinical" / "medqa.toml")
