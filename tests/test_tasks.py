"""Every clinical task end to end: its TOML and bundled sample, its rendered prompt against a golden file,
a fake-engine CLI run with records and report rows, the context policy, and re-scoring without the data.

Regenerate the golden prompts after an intended prompt change with  EDGEEVAL_UPDATE_GOLDEN=1 pytest tests/test_tasks.py
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from edgeeval.config.models import load_models_config
from edgeeval.config.tasks import ContextSpec, load_task
from edgeeval.data.example import Example
from edgeeval.engine import EngineSettings
from edgeeval.engine.fake import FakeModel
from edgeeval.errors import ConfigError
from edgeeval.prompting.context import fit_example
from edgeeval.prompting.token_budget import TokenCounter
from edgeeval.run.planning import TASKS_DIR, plan_units, prepare_model, prepare_task, task_messages
from edgeeval.run.store import read_records
from edgeeval.types import ErrorKind

from cli_support import run_cli
from conftest import FAKE_MODELS_TOML, ROOT, make_project

TASKS = sorted(p.stem for p in (ROOT / TASKS_DIR).glob("*.toml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
EXPECTED_TASKS = {
    "case_challenges", "jama_challenges", "medqa", "medmcqa", "pubmedqa", "mednli", "meqsum", "problem_summary",
    "medisumqa", "medisumcode", "longhealth_t1", "longhealth_t2", "longhealth_t3",
}
MODELS = ("general-small", "bio-small")


def fake_run(project: Path, out: Path, tasks: list[str], *extra: str) -> int:
    task_args = [arg for task in tasks for arg in ("--task", task)]
    return run_cli(project, "run", "--pair", "test", *task_args, "--engine", "fake",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), "--quiet", *extra)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def repo_project():
    return load_models_config(ROOT / "models.toml")


# --- the task files --------------------------------------------------------------------------------------


def test_every_study_task_is_defined() -> None:
    assert set(TASKS) == EXPECTED_TASKS


@pytest.mark.parametrize("name", TASKS)
def test_task_loads_its_bundled_sample(name: str) -> None:
    task = prepare_task(repo_project(), name, None, None)
    spec = task.spec
    items = {e.id for e in task.examples}
    assert 8 <= len(items) <= 40 and len(task.examples) == len(items) * spec.repeats
    assert len({e.unit_id for e in task.examples}) == len(task.examples)
    assert spec.description and spec.system and spec.data.path.startswith("benchmarks/clinical/data/")
    for example in task.examples:
        if spec.kind == "label":
            assert example.gold in spec.labels
        if spec.kind in ("multiple_choice", "abstention"):
            assert example.gold in example.fields["options"]
    if spec.few_shot is not None:
        assert len(task.shots) == spec.few_shot.count and task.few_shot_sha256


def test_task_hash_covers_the_few_shot_file(tmp_path: Path) -> None:
    project_dir = make_project(tmp_path)
    project = load_models_config(project_dir / "models.toml")
    before = prepare_task(project, "mednli", None, None).hash
    shots = project_dir / "benchmarks/clinical/data/mednli_fewshot.jsonl"
    shots.write_text(shots.read_text().replace("fluid overload", "volume overload"))
    assert prepare_task(project, "mednli", None, None).hash != before


def test_few_shot_example_that_is_a_test_item_is_refused(tmp_path: Path) -> None:
    project_dir = make_project(tmp_path)
    data = project_dir / "benchmarks/clinical/data"
    (data / "mednli_fewshot.jsonl").write_text((data / "mednli_sample.jsonl").read_text())
    assert fake_run(project_dir, tmp_path / "run", ["mednli"]) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"metrics": ["rouge1"]}, "do not apply to kind 'multiple_choice'"),
        ({"kind": "label"}, "needs 'labels'"),
        ({"data": {"path": "x", "answer_index_base": 0}}, "applies to format 'medmcqa' only"),
        ({"context": {"policy": "truncate"}}, "needs 'field'"),
        ({"data": {"path": "x", "format": "longhealth", "documents": "distractors_only"}}, "unanswerable_option"),
    ],
)
def test_task_toml_mistakes_are_config_errors(tmp_path: Path, change: dict, message: str) -> None:
    import tomllib

    raw = tomllib.loads((ROOT / TASKS_DIR / "case_challenges.toml").read_text())
    raw.update(change)
    path = tmp_path / "bad.toml"
    path.write_text(_toml(raw))
    with pytest.raises(ConfigError, match=message):
        load_task(path)


def _toml(raw: dict) -> str:
    lines, tables = [], []
    for key, value in raw.items():
        (tables if isinstance(value, dict) else lines).append((key, value))
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in lines)
    for name, table in tables:
        text += f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    return text


def _toml_value(value) -> str:
    """JSON is TOML for strings, numbers, booleans and lists; a table inside a table is written inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


# --- golden prompts ----------------------------------------------------------------------------------------


def rendered_conversation(name: str) -> str:
    task = prepare_task(repo_project(), name, None, None)
    example = task.examples[0]
    parts = [f"# task {name}, example {example.id}, gold {example.gold}"]
    parts += [f"=== {m['role']} ===\n{m['content']}" for m in task_messages(task, example)]
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("name", TASKS)
def test_prompt_matches_golden_file(name: str) -> None:
    path = GOLDEN / f"{name}.txt"
    text = rendered_conversation(name)
    if os.environ.get("EDGEEVAL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with EDGEEVAL_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"prompt of {name} changed; review, then EDGEEVAL_UPDATE_GOLDEN=1"


# --- the whole pipeline on the fake engine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tasks")
    project = make_project(root)
    out = root / "run"
    assert fake_run(project, out, TASKS) == 0
    return project, out


@pytest.mark.parametrize("name", TASKS)
def test_fake_run_records_every_example(full_run, name: str) -> None:
    project, out = full_run
    expected = prepare_task(load_models_config(project / "models.toml"), name, None, None)
    for model in MODELS:
        records = read_records(out / "records" / model / f"{name}.jsonl")
        assert sorted(r.example_id for r in records) == sorted(e.id for e in expected.examples)
        assert all(r.error is None and r.output for r in records)
        if expected.spec.kind in ("multiple_choice", "abstention"):
            assert all(r.options for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["tasks"][name]
    assert (entry["kind"], entry["metrics"], entry["labels"]) == (expected.spec.kind, expected.spec.metrics,
                                                                   expected.spec.labels)


@pytest.mark.parametrize("name", TASKS)
def test_fake_run_reports_every_declared_metric(full_run, name: str) -> None:
    _, out = full_run
    spec = load_task(ROOT / TASKS_DIR / f"{name}.toml")
    results = [r for r in read_csv(out / "results.csv") if r["task"] == name]
    for model in MODELS:
        metrics = {r["metric"] for r in results if r["model"] == model}
        for metric in spec.metrics:
            if metric == "confusion":
                assert any(m.startswith("confusion_") for m in metrics)
            else:
                assert metric in metrics
    # BERTScore without an encoder, UMLS-F1 always: reported as not computed (no value, n = 0), and not compared.
    not_computed = {r["metric"] for r in results if r["n"] == "0"}
    assert not_computed <= {"bertscore_f1", "umls_f1"}
    assert all(r["value"].lower() in ("nan", "") for r in results if r["metric"] in not_computed)
    compared = {r["metric"]: r for r in read_csv(out / "comparison.csv") if r["task"] == name}
    assert set(compared) == set(spec.metrics) - {"error_rate", "confusion"} - not_computed
    for metric, row in compared.items():
        assert row["test"] in ("mcnemar_exact", "paired_permutation")
        assert 0.0 <= float(row["p_value"]) <= 1.0 and float(row["p_holm"]) >= float(row["p_value"])
        assert float(row["ci_low"]) <= float(row["delta"]) <= float(row["ci_high"])


def test_rescoring_needs_only_the_run_directory(full_run, tmp_path: Path) -> None:
    _, out = full_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    expected = (copy / "results.csv").read_text(), (copy / "comparison.csv").read_text()
    for name in ("results.csv", "comparison.csv"):
        (copy / name).unlink()
    elsewhere = tmp_path / "elsewhere"  # no benchmarks/ and no data files here
    elsewhere.mkdir()
    assert run_cli(elsewhere, "report", str(copy)) == 0
    assert ((copy / "results.csv").read_text(), (copy / "comparison.csv").read_text()) == expected


def test_tasks_command_lists_every_task_with_its_count(full_run, capsys) -> None:
    project, _ = full_run
    assert run_cli(project, "tasks") == 0
    out = capsys.readouterr().out
    for name in TASKS:
        count = len(prepare_task(load_models_config(project / "models.toml"), name, None, None).examples)
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{count} examples" in line


def test_data_override_points_a_task_at_another_file(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    data = tmp_path / "mli_test_v1.jsonl"
    rows = [{"sentence1": "BP 80/40.", "sentence2": "The patient is hypotensive.", "gold_label": "entailment",
             "pairID": "p1"},
            {"sentence1": "Afebrile.", "sentence2": "The patient has a fever.", "gold_label": "contradiction",
             "pairID": "p2"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert fake_run(project, tmp_path / "run", ["mednli"], "--data", f"mednli={data}") == 0
    records = read_records(tmp_path / "run" / "records" / "bio-small" / "mednli.jsonl")
    assert sorted(r.example_id for r in records) == ["p1", "p2"]  # answered in sharing order (engine/sharing.py)


def test_label_outside_the_task_labels_exits_2_naming_the_line(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path)
    data = tmp_path / "mli.jsonl"
    data.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "gold_label": "unrelated", "pairID": "x"}) + "\n")
    assert fake_run(project, tmp_path / "run", ["mednli"], "--data", f"mednli={data}") == 2
    err = capsys.readouterr().err
    assert f"{data}:1" in err and "'unrelated'" in err and err.count("\n") == 1


# --- the context-length policy ---------------------------------------------------------------------------


def small_window_models(n_ctx: int) -> str:
    return FAKE_MODELS_TOML.replace('family = "general"', f'family = "general"\nn_ctx = {n_ctx}').replace(
        'family = "biomedical"', f'family = "biomedical"\nn_ctx = {n_ctx}')


def estimated_context(project: Path, task: str, rule: str, field: str) -> None:
    """The task's [context] as an estimating rule (the built-in CLUE tasks count the model's own tokens)."""
    import re

    toml = project / TASKS_DIR / f"{task}.toml"
    section = (f'[context]\npolicy = "truncate"\nfield = "{field}"\nrule = "{rule}"\nchars_per_token = 3.0\n')
    toml.write_text(re.sub(r"\[context\]\n(?:[^\[\n][^\n]*\n)*", section, toml.read_text(), count=1))


def test_truncation_drops_documents_and_is_recorded(tmp_path: Path) -> None:
    project = make_project(tmp_path, small_window_models(1024))
    estimated_context(project, "longhealth_t2", "drop_documents", "documents")
    assert fake_run(project, tmp_path / "run", ["longhealth_t2"]) == 0
    records = read_records(tmp_path / "run" / "records" / "bio-small" / "longhealth_t2.jsonl")
    cut = [r for r in records if r.truncation]
    assert cut and all(r.error is None for r in records)
    for record in cut:
        note = record.truncation
        assert (note["rule"], note["field"]) == ("drop_documents", "documents")
        assert note["documents_dropped"] >= 1
        assert note["estimated_tokens_after"] <= note["budget_tokens"] == 1024 - 50  # the task's max_tokens, 50 as in CLUE
        assert note["estimated_tokens_before"] > note["budget_tokens"]
        assert len(record.prompt) <= 3.0 * (1024 - 50)


def test_prompt_that_cannot_fit_is_an_error_record_not_a_generation(tmp_path: Path) -> None:
    project = make_project(tmp_path, small_window_models(256))
    estimated_context(project, "medisumqa", "drop_middle", "discharge_summary")
    assert fake_run(project, tmp_path / "run", ["medisumqa"]) == 0
    records = read_records(tmp_path / "run" / "records" / "bio-small" / "medisumqa.jsonl")
    assert records and all(r.output is None and r.error.startswith("prompt_too_long") for r in records)
    assert all(r.error_kind is ErrorKind.PROMPT_TOO_LONG for r in records)  # from the context policy, not the engine
    assert "'discharge_summary' cut" in records[0].error
    rates = {r["metric"]: float(r["value"]) for r in read_csv(tmp_path / "run" / "results.csv")
             if r["model"] == "bio-small"}
    assert rates["error_rate"] == 1.0 and rates["rougeL"] == 0.0


def _example(**fields) -> Example:
    return Example(id="x", fields=fields, gold="A", source="test")


def test_drop_middle_keeps_head_and_tail() -> None:
    policy = ContextSpec(policy="truncate", field="note", rule="drop_middle", chars_per_token=1.0)
    note = "HEAD " + "m" * 2000 + " TAIL"
    fitted = fit_example(_example(note=note, question="Q?"), policy, 600,
                         lambda e: f"{e.fields['note']}\n{e.fields['question']}")
    text = fitted.example.fields["note"]
    assert text.startswith("HEAD ") and text.endswith(" TAIL") and "characters left out" in text
    head, tail = text.split("\n[")[0], text.split("]\n")[-1]
    assert len(text) + 3 <= 600 and fitted.truncation["chars_dropped"] == len(note) - len(head) - len(tail)
    assert fitted.example.fields["question"] == "Q?" and fitted.failure is None


def test_skip_policy_leaves_the_prompt_to_the_engine() -> None:
    fitted = fit_example(_example(note="x" * 10_000), ContextSpec(), 10, lambda e: e.fields["note"])
    assert fitted.example.fields["note"] == "x" * 10_000 and fitted.truncation is None and fitted.failure is None


def test_drop_documents_keeps_the_best_ranked_and_cuts_its_tail_last() -> None:
    policy = ContextSpec(policy="truncate", field="docs", rule="drop_documents", chars_per_token=1.0)
    docs = [{"text": "b" * 300, "rank": 1}, {"text": "a" * 300, "rank": 0}, {"text": "c" * 300, "rank": 2}]

    def render(e):
        return "".join(d["text"] for d in e.fields["docs"])

    two = fit_example(_example(docs=docs), policy, 650, render)
    assert [d["rank"] for d in two.example.fields["docs"]] == [1, 0]  # shown order kept
    assert two.truncation["documents_dropped"] == 1
    one = fit_example(_example(docs=docs), policy, 200, render)
    (kept,) = one.example.fields["docs"]
    assert kept["rank"] == 0 and kept["text"].startswith("a" * 50) and "characters left out" in kept["text"]
    assert one.truncation["documents_dropped"] == 2 and one.truncation["chars_dropped"] > 0
    assert fit_example(_example(docs=docs), policy, 10, render).failure.message.startswith("prompt_too_long")


def test_a_medisumqa_answer_from_the_discharge_instructions_is_not_in_the_prompt() -> None:
    """CLUE shows the letter without its discharge instructions, from which the answers were written."""
    task = prepare_task(repo_project(), "medisumqa", None, None)
    example = next(e for e in task.examples if e.gold.startswith("Weigh yourself every morning"))
    rows = [json.loads(line) for line in (ROOT / task.spec.data.path).read_text().splitlines()]
    assert "Weigh yourself every morning" in next(r for r in rows if r["Answer"] == example.gold)["with_discharge_summary"]
    conversation = "\n".join(m["content"] for m in task_messages(task, example))
    assert "Weigh yourself every morning" not in conversation and "Discharge Instructions" not in conversation


@pytest.mark.parametrize("name, cue", [("meqsum", "Question: "), ("medisumqa", "Answer: "),
                                       ("medisumcode", "ICD-10 Codes: "),
                                       ("problem_summary", "Diagnoses/Patient problems: ")])
def test_a_tasks_reply_cue_starts_the_assistant_turn(project_dir: Path, name: str, cue: str) -> None:
    """As CLUE sends it: the prompt ends with the chat template's assistant turn and then the cue."""
    project = load_models_config(project_dir / "models.toml", models_dir=str(project_dir.parent / "models"))
    words = TokenCounter(FakeModel("fake.gguf", EngineSettings()))
    task = prepare_task(project, name, None, 2)
    units, _ = plan_units(prepare_model(project, "general-small"), task, words)
    assert units and all(u.prompt.endswith("<|im_start|>assistant\n" + cue) for u in units)
    no_cue = prepare_task(project, "mednli", None, 2)
    assert all(u.prompt.endswith("<|im_start|>assistant\n")
               for u in plan_units(prepare_model(project, "general-small"), no_cue, words)[0])
