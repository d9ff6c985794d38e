"""`--mode loglik` and `--parallel` through the command line on the fake engine (in its worker process):
records with every option's scores, the answer recomputed from them, resume, crashes that cost one
chunk, and the task file's [loglik] section checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edgeeval.config.tasks import load_task
from edgeeval.data.example import Example
from edgeeval.engine import EngineError, EngineSettings, OptionScore
from edgeeval.engine.fake import FakeModel
from edgeeval.errors import ConfigError
from edgeeval.run.answering import LOGLIK_CHUNK, letter_scores
from edgeeval.run.planning import Unit
from edgeeval.run.store import read_records
from edgeeval.scoring.records import load_current_records, parse_answer
from edgeeval.types import ErrorKind

from cli_support import run_cli

MODELS = ("general-small", "bio-small")


def fake_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--pair", "test", "--engine", "fake", "--models-dir",
                   str(project.parent / "models"), "--out", str(out), "--quiet", *extra)


def loglik_records(out: Path, model: str, task: str) -> list:
    return read_records(out / "records" / model / f"{task}@loglik.jsonl")


def test_loglik_records_hold_every_option_and_the_best_one(project_dir, tmp_path):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--mode", "loglik", "--task", "case_challenges", "--task", "mednli") == 0
    labels = load_task(project_dir / "benchmarks/clinical/mednli.toml").labels
    for model in MODELS:
        cases = loglik_records(out, model, "case_challenges")
        assert len(cases) == 36 and all(r.mode == "loglik" and r.error is None for r in cases)
        for record in cases:
            assert list(record.scores) == list(record.options)  # letters, in the order offered
            best = max(record.scores, key=lambda k: record.scores[k]["mean_logprob"])
            assert record.output == best and record.normalization == "mean"
            assert record.prompt.endswith("The answer is ")  # the task's answer_prefix
        nli = loglik_records(out, model, "mednli")
        for record in nli:
            assert list(record.scores) == labels and record.normalization == "sum"
            assert record.output == max(record.scores, key=lambda k: record.scores[k]["logprob"])
            assert all(len(s["token_logprobs"]) == s["n_tokens"] for s in record.scores.values())
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["tasks"]["case_challenges@loglik"]
    assert entry["mode"] == "loglik" and entry["loglik"]["scoring"] == "letter" and entry["name"] == "case_challenges"
    assert manifest["invocations"][-1]["modes"] == ["loglik"]
    with open(out / "results.csv") as handle:
        tasks = {row["task"] for row in csv.DictReader(handle)}
    assert tasks == {"case_challenges@loglik", "mednli@loglik"}
    report = (out / "report.md").read_text()
    assert "| case_challenges@loglik | multiple_choice | loglik: letter |" in report
    assert "| mednli@loglik | label | loglik: full text, sum |" in report
    assert "decoded of" in report and "--parallel auto (1 sequences)" in report


def test_generation_and_loglik_share_a_run_directory_and_resume_apart(project_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "case_challenges") == 0
    assert fake_run(project_dir, out, "--task", "case_challenges", "--mode", "loglik") == 0
    assert "72 examples generated, 0 already done" in capsys.readouterr().out  # loglik is new work
    assert fake_run(project_dir, out, "--task", "case_challenges", "--mode", "loglik") == 0
    assert fake_run(project_dir, out, "--task", "case_challenges") == 0
    text = capsys.readouterr().out
    assert text.count("0 examples generated, 72 already done") == 2
    _, frame = load_current_records(out)
    assert set(frame["task"].unique()) == {"case_challenges", "case_challenges@loglik"}
    assert frame.height == 144


def test_changing_the_loglik_section_redoes_loglik_only(project_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "mednli") == 0
    assert fake_run(project_dir, out, "--task", "mednli", "--mode", "loglik") == 0
    toml = project_dir / "benchmarks/clinical/mednli.toml"
    toml.write_text(toml.read_text().replace('normalization = "sum"', 'normalization = "mean"'))
    capsys.readouterr()
    assert fake_run(project_dir, out, "--task", "mednli", "--mode", "loglik") == 0
    assert fake_run(project_dir, out, "--task", "mednli") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "examples generated" in line]
    assert lines[0].startswith("24 examples generated, 0 already done")  # 12 pairs x 2 models, all again
    assert lines[1].startswith("0 examples generated, 24 already done")
    assert all(r.normalization == "mean" for r in loglik_records(out, "bio-small", "mednli")[-3:])


def test_answer_is_recomputed_from_the_recorded_scores(project_dir, tmp_path):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "case_challenges", "--mode", "loglik") == 0
    path = out / "records" / "bio-small" / "case_challenges@loglik.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # Make the gold option the best on the first row: the scorer must follow the scores, not `output`.
    first = rows[0]
    first["scores"][first["gold"]]["mean_logprob"] = 0.0
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    _, frame = load_current_records(out)
    row = frame.filter((frame["model"] == "bio-small") & (frame["example_id"] == first["example_id"]))
    assert row["parsed"][0] == first["gold"]


@pytest.mark.parametrize("normalization, expected", [("mean", "B"), ("sum", "A")])
def test_parse_answer_uses_the_recorded_normalization(normalization, expected):
    scores = {"A": {"logprob": -2.0, "mean_logprob": -1.0}, "B": {"logprob": -3.0, "mean_logprob": -0.5},
              "C": {"logprob": -3.0, "mean_logprob": -0.5}}  # C ties with B: the first one wins
    record = {"mode": "loglik", "scores": scores, "normalization": normalization, "output": "C", "error": None}
    assert parse_answer(record, "multiple_choice", []) == expected
    assert parse_answer({**record, "error": "native crash", "scores": None}, "multiple_choice", []) is None


def test_native_crash_in_loglik_costs_one_chunk(project_dir, tmp_path, monkeypatch):
    # The worker segfaults whenever what it scores holds this phrase (one MedNLI pair has it), on the
    # retry too: the chunk of items sent with it becomes error records, nothing else is lost.
    sample = (project_dir / "benchmarks/clinical/data/mednli_sample.jsonl").read_text().splitlines()
    marker = json.loads(sample[5])["sentence1"]
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", f"segv:{marker}")
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "mednli", "--mode", "loglik") == 0
    for model in MODELS:
        records = loglik_records(out, model, "mednli")
        failed = [r for r in records if r.error is not None]
        assert len(records) == len(sample)
        assert 1 <= len(failed) <= LOGLIK_CHUNK and all("native crash" in r.error for r in failed)
        assert any(marker in r.prompt for r in failed)
        assert all(r.scores is None and r.output is None for r in failed)
        assert all(r.scores is not None for r in records if r.error is None)
    monkeypatch.delenv("EDGEEVAL_FAULT_INJECT")
    assert fake_run(project_dir, out, "--task", "mednli", "--mode", "loglik") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["bio-small"]["restarts"] == 2  # the crash and the crash on retry


def test_letter_crash_costs_one_item(project_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", "segv:crushing substernal chest pain")
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "case_challenges", "--mode", "loglik") == 0
    failed = [r for r in loglik_records(out, "general-small", "case_challenges") if r.error]
    assert len(failed) == 1 and "crushing substernal chest pain" in failed[0].prompt


def test_task_without_loglik_section_is_refused(project_dir, capsys):
    assert fake_run(project_dir, project_dir / "out", "--task", "meqsum", "--mode", "loglik") == 2
    err = capsys.readouterr().err
    assert "task 'meqsum' has no [loglik] section" in err and "meqsum.toml" in err
    assert not (project_dir / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("kind_and_section, message", [
    ('kind = "summary"\nmetrics = ["rouge1"]\n[loglik]\nscoring = "full_text"', "'loglik' applies to kinds"),
    ('kind = "label"\nlabels = ["a", "b"]\n[loglik]\nscoring = "letter"', "needs lettered options"),
    ('kind = "multiple_choice"\n[loglik]\nscoring = "letters"', "key 'loglik.scoring'"),
    ('kind = "multiple_choice"\n[loglik]\nnormalisation = "sum"', "unknown key 'loglik.normalisation'"),
])
def test_loglik_section_is_validated(tmp_path, kind_and_section, message):
    head, _, section = kind_and_section.partition("\n[loglik]\n")
    path = tmp_path / "task.toml"
    path.write_text(f'prompt = "p.j2"\n{head}\n[data]\npath = "d.csv"\n[loglik]\n{section}\n')
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_task(path)


def test_parallel_generation_gives_the_one_at_a_time_records(project_dir, tmp_path, capsys):
    one, many = tmp_path / "one", tmp_path / "many"
    assert fake_run(project_dir, one, "--task", "case_challenges") == 0
    assert fake_run(project_dir, many, "--task", "case_challenges", "--parallel", "4") == 0
    for model in MODELS:
        a = read_records(one / "records" / model / "case_challenges.jsonl")
        b = read_records(many / "records" / model / "case_challenges.jsonl")
        assert [(r.example_id, r.output, r.prompt_hash) for r in a] == [(r.example_id, r.output, r.prompt_hash) for r in b]
    assert json.loads((many / "manifest.json").read_text())["invocations"][-1]["parallel"] == 4
    # A run made in parallel resumes one at a time, and the other way round: same units.
    capsys.readouterr()
    assert fake_run(project_dir, many, "--task", "case_challenges") == 0
    assert "0 examples generated, 72 already done" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "33"])
def test_parallel_out_of_range_is_refused(project_dir, capsys, value):
    assert fake_run(project_dir, project_dir / "out", "--task", "case_challenges", "--parallel", value) == 2
    assert "--parallel must be 'auto' or between 1 and 32" in capsys.readouterr().err


def test_loglik_section_may_name_its_own_prompt(project_dir, tmp_path):
    (project_dir / "prompts/case_loglik.j2").write_text("{{ question }}\n\nWhich option is right?")
    toml = project_dir / "benchmarks/clinical/case_challenges.toml"
    toml.write_text(toml.read_text() + 'prompt = "prompts/case_loglik.j2"\n')  # the [loglik] table is last
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "case_challenges", "--mode", "loglik") == 0
    assert fake_run(project_dir, out, "--task", "case_challenges") == 0
    loglik = loglik_records(out, "bio-small", "case_challenges")
    generated = read_records(out / "records" / "bio-small" / "case_challenges.jsonl")
    assert all("Which option is right?" in r.prompt for r in loglik)
    assert not any("Which option is right?" in r.prompt for r in generated)
    tasks = json.loads((out / "manifest.json").read_text())["tasks"]
    assert tasks["case_challenges@loglik"]["prompt"] == "prompts/case_loglik.j2"
    assert tasks["case_challenges"]["prompt"] == "prompts/case_challenge.j2"


def test_records_hold_the_scores_the_engine_gave(project_dir, tmp_path):
    # Scored in the worker, sent over its socket as OptionScore, written as each option's record entry.
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--mode", "loglik", "--task", "case_challenges", "--task", "mednli") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for model in MODELS:
        fake = FakeModel(manifest["models"][model]["path"], EngineSettings(backend="fake"))
        for record in loglik_records(out, model, "case_challenges"):
            letters = fake.letter_logprobs(record.prompt, list(record.options))
            assert record.scores == {k: OptionScore.single_token(lp).record_entry() for k, lp in letters.items()}
        for record in loglik_records(out, model, "mednli"):
            scores = fake.loglikelihood(record.prompt, list(record.scores))
            assert record.scores == {k: s.record_entry() for k, s in zip(record.scores, scores)}
            assert record.n_prompt_tokens == scores[0].n_context_tokens


def _letter_unit(letters: list[str]) -> Unit:
    example = Example(id="q1", fields={"options": {k: k for k in letters}}, gold="A", source="test:1")
    return Unit(example, "Which one?\nA. aspirin\nB. heparin\nAnswer:", "p", continuations=tuple((k, k) for k in letters))


def test_a_letter_that_is_not_one_token_falls_back_to_full_text_scoring():
    fake = FakeModel("bio.gguf", EngineSettings(backend="fake"))
    unit = _letter_unit([" A", " B or C"])  # two words: not one token for the fake engine
    with pytest.raises(EngineError) as refused:
        fake.letter_logprobs(unit.prompt, [" A", " B or C"])
    assert refused.value.kind is ErrorKind.NOT_SINGLE_TOKEN
    scores = letter_scores(fake, unit)
    assert scores == fake.loglikelihood(unit.prompt, [" A", " B or C"]) and all(s.failure is None for s in scores)
    assert scores[1].n_tokens == 3


def test_a_letter_prompt_the_engine_refuses_gives_failed_scores_of_its_kind():
    fake = FakeModel("bio.gguf", EngineSettings(backend="fake", n_ctx=4))
    scores = letter_scores(fake, _letter_unit([" A", " B"]))
    assert [s.failure.kind for s in scores] == [ErrorKind.PROMPT_TOO_LONG] * 2
    assert all(s.failure.message.startswith("prompt_too_long: ") and s.logprob is None for s in scores)
