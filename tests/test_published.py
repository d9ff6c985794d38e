"""The published study beside a run: models.toml's `reference`, a task's [published] section, the shipped
scores, and the report section "Against the published study"."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from edgeeval.config.locations import PUBLISHED_DIR
from edgeeval.config.models import load_models_config
from edgeeval.config.tasks import load_task
from edgeeval.data.published import load_published, published_value
from edgeeval.errors import ConfigError, DataError

from cli_support import run_cli
from conftest import FAKE_MODELS_TOML, ROOT, make_project

REFERENCED = (FAKE_MODELS_TOML
              .replace('family = "general"\n', 'family = "general"\nreference = "Meta-Llama-3-8B-Instruct"\n', 1)
              .replace('family = "biomedical"\n', 'family = "biomedical"\nreference = "Llama3-OpenBioLLM-8B"\n', 1))


def section(report: str) -> str:
    return report.split("## Against the published study", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def referenced_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("published")
    project = make_project(tmp, REFERENCED)
    out = tmp / "run"
    assert run_cli(project, "run", "--pair", "test", "--task", "mednli", "--task", "longhealth_t3", "--engine", "fake",
                   "--quiet", "--models-dir", str(tmp / "models"), "--out", str(out)) == 0
    return out


def test_the_report_sets_the_published_values_beside_the_run(referenced_run):
    text = section((referenced_run / "report.md").read_text())
    # MedNLI accuracy as published: 74.08 (Llama-3-8B-Instruct) and 44.93 (OpenBioLLM-8B), in percent.
    assert "| mednli | accuracy | general-small | Meta-Llama-3-8B-Instruct | 0.741 |" in text
    assert "| mednli | accuracy | bio-small | Llama3-OpenBioLLM-8B | 0.449 |" in text
    # LongHealth task 3 (abstaining): 56.25 vs 1.55; the kind's abstention_rate is CLUE's task-3 accuracy.
    assert "| longhealth_t3 | abstention_rate | general-small | Meta-Llama-3-8B-Instruct | 0.562 |" in text
    assert "| longhealth_t3 | abstention_rate | bio-small | Llama3-OpenBioLLM-8B | 0.015 |" in text
    # The pair's published difference (candidate - baseline) and whether this run's points the same way.
    direction = next(line for line in text.splitlines() if line.startswith("| test | mednli | accuracy |"))
    assert "| -0.292 |" in direction and ("direction" in direction or "| – |" in direction)


def test_each_published_row_says_whether_the_value_lies_in_the_runs_ci(referenced_run):
    rows = [line for line in section((referenced_run / "report.md").read_text()).splitlines()
            if line.startswith("| mednli |") or line.startswith("| longhealth_t3 |")]
    assert rows and all(line.rstrip(" |").endswith(("yes", "no", "–")) for line in rows)


def test_the_html_report_has_the_section_too(referenced_run):
    html = (referenced_run / "report.html").read_text()
    assert 'id="published"' in html and "Meta-Llama-3-8B-Instruct" in html and "0.741" in html


def test_without_references_the_section_says_how_to_name_them(tmp_path):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    assert run_cli(project, "run", "--pair", "test", "--task", "mednli", "--engine", "fake", "--quiet",
                   "--models-dir", str(tmp_path / "models"), "--out", str(out), "--limit", "3") == 0
    assert "`reference = " in section((out / "report.md").read_text())


def test_an_unknown_reference_is_a_config_error_listing_the_published_names(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text(REFERENCED.replace("Meta-Llama-3-8B-Instruct", "Llama-3-8B-Instrukt"))
    with pytest.raises(ConfigError, match="reference 'Llama-3-8B-Instrukt' is not a model of the published scores"):
        load_models_config(config)


def test_the_study_entries_name_their_published_counterparts():
    project = load_models_config(ROOT / "models.toml")
    for pair in ("llama3-8b", "llama3-70b", "mistral-7b", "llama2-7b"):
        spec = project.config.pairs[pair]
        assert project.config.models[spec.baseline].reference and project.config.models[spec.candidate].reference


def test_published_metrics_must_be_the_kinds(tmp_path):
    text = (ROOT / "benchmarks/clinical/mednli.toml").read_text().replace('accuracy = "accuracy"', 'bleu = "accuracy"')
    (tmp_path / "mednli.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"published metrics \['bleu'\] are not metrics of kind 'label'"):
        load_task(tmp_path / "mednli.toml")


def test_the_shipped_scores_are_the_transcription_and_the_abstract():
    scores = load_published(PUBLISHED_DIR)
    assert published_value(PUBLISHED_DIR, "Meta-Llama-3-8B-Instruct", "MedNLI", "accuracy").percent == 74.08
    assert published_value(PUBLISHED_DIR, "Llama3-OpenBioLLM-70B", "JAMA case challenges", "accuracy").percent == 66.4
    with open(PUBLISHED_DIR / "clue_published_scores.csv", encoding="utf-8") as handle:
        assert len([s for s in scores if s.source == "clue_published_scores.csv"]) == len(list(csv.DictReader(handle)))


def test_every_published_mapping_of_a_built_in_task_exists_for_the_study_models():
    for path in sorted((ROOT / "benchmarks/clinical").glob("*.toml")):
        spec = load_task(path)
        if spec.published is None:
            continue
        for published_metric in spec.published.metrics.values():
            found = [s for s in load_published(PUBLISHED_DIR)
                     if (s.task, s.metric) == (spec.published.task, published_metric)]
            assert found, f"{path.name}: no published {spec.published.task} {published_metric}"


def test_a_malformed_published_file_is_named(tmp_path):
    (tmp_path / "scores.csv").write_text("model,task,metric,value\nA,B,C,not a number\n")
    with pytest.raises(DataError, match=r"scores.csv:2: a row needs"):
        load_published(tmp_path)
