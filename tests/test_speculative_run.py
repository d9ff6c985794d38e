"""Speculative decoding and `--parallel` through the command line on the fake engine: which tasks draft
and how, what the records and the manifest say, and that a crash in a batch still costs one example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeeval.run.store import read_records

from cli_support import run_cli


def fake_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--pair", "test", "--engine", "fake", "--models-dir", str(project.parent / "models"),
                   "--out", str(out), "--quiet", *extra)


def methods(out: Path, task: str) -> set:
    recs = read_records(out / "records" / "bio-small" / f"{task}.jsonl")
    return {(r.speculative or {}).get("method") for r in recs}


def test_speculative_auto_drafts_summary_tasks_by_prompt_lookup(project_dir, tmp_path):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "meqsum", "--task", "case_challenges", "--limit", "3",
                    "--speculative", "auto") == 0
    assert methods(out, "meqsum") == {"lookup"}
    assert methods(out, "case_challenges") == {None}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["speculative"] == "auto" and manifest["settings"]["draft_model"] is None
    assert manifest["invocations"][-1]["parallel"] == "auto"
    report = (out / "report.md").read_text()
    assert "speculative decoding" in report and "drafted tokens accepted" not in report  # the fake counts none


@pytest.mark.parametrize("flag, summary, other", [(None, None, None), ("none", None, None),
                                                   ("lookup", "lookup", "lookup")])
def test_speculative_flag_sets_every_task(project_dir, tmp_path, flag, summary, other):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "meqsum", "--task", "case_challenges", "--limit", "2",
                    *(("--speculative", flag) if flag else ())) == 0
    assert methods(out, "meqsum") == {summary} and methods(out, "case_challenges") == {other}


def test_a_draft_model_drafts_for_every_generation_task_and_is_in_the_manifest(project_dir, tmp_path):
    out = tmp_path / "run"
    draft = project_dir.parent / "models" / "general.gguf"
    assert fake_run(project_dir, out, "--task", "meqsum", "--task", "case_challenges", "--limit", "2",
                    "--draft", str(draft)) == 0
    assert methods(out, "meqsum") == {"draft"} and methods(out, "case_challenges") == {"draft"}
    assert json.loads((out / "manifest.json").read_text())["settings"]["draft_model"] == str(draft.resolve())


@pytest.mark.parametrize("args, message", [
    (("--draft", "no-such-model"), "--draft no-such-model: no such model"),
    (("--parallel", "many"), "--parallel must be 'auto' or between 1 and 32 (got many)"),
])
def test_bad_speculative_settings_are_one_line_errors(project_dir, tmp_path, capsys, args, message):
    assert fake_run(project_dir, tmp_path / "run", "--task", "meqsum", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_crash_in_a_batch_costs_one_example(project_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", "segv:crushing substernal chest pain")
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--task", "case_challenges", "--limit", "8", "--parallel", "4") == 0
    recs = read_records(out / "records" / "bio-small" / "case_challenges.jsonl")
    assert [r.example_id for r in recs if r.error] == ["cc-001"]


@pytest.mark.parametrize("weights_gb, kv_mb, threads, expected", [
    (0.1, 100, 2, 4),     # SmolLM2 135M: little to gain
    (0.25, 100, 1, 8),    # Gemma 3 270M on one thread
    (1.1, 100, 2, 16),    # Qwen 1.5B: memory-bound, batching is nearly free
    (4.9, 512, 16, 8),    # an 8B on 16 threads: 0.3 GB per thread
    (4.9, 1024, 2, 4),    # an 8B at 8k context: the caches would outgrow the weights at 8
])
def test_parallel_auto_follows_the_written_rule(weights_gb, kv_mb, threads, expected):
    from edgeeval.engine.batching import auto_parallel

    assert auto_parallel(int(weights_gb * 1e9), kv_mb << 20, threads) == expected
