"""The whole pipeline through the CLI on the fake engine (in its worker process): run, resume,
crashes, bad input, and re-scoring without the models."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeeval.run.store import read_records
from edgeeval.types import ErrorKind

from cli_support import count_lines, fake_engine_env, run_cli, wait_for

N_SAMPLE = 36


def fake_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--pair", "test", "--task", "case_challenges", "--engine", "fake",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), "--quiet", *extra)


def records(out: Path, model: str) -> list:
    return read_records(out / "records" / model / "case_challenges.jsonl")


def test_run_writes_records_manifest_and_reports(project_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert fake_run(project_dir, out) == 0
    for model in ("general-small", "bio-small"):
        recs = records(out, model)
        assert len(recs) == N_SAMPLE and len({r.example_id for r in recs}) == N_SAMPLE
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["bio-small"]["family"] == "biomedical"
    assert len(manifest["models"]["bio-small"]["sha256"]) == 64
    assert manifest["tasks"]["case_challenges"]["examples"] == N_SAMPLE
    assert manifest["settings"]["backend"] == "fake"
    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = next(r for r in rows if r["metric"] == "accuracy")
    assert accuracy["test"] == "mcnemar_exact" and 0.0 <= float(accuracy["p_value"]) <= 1.0
    assert int(accuracy["n_paired"]) == N_SAMPLE
    text = (out / "report.md").read_text()
    assert "Paired comparison: test" in text and "bio-small" in text
    assert f"report: {(out / 'report.md').resolve()}" in capsys.readouterr().out


@pytest.mark.parametrize(("flag", "expected"), [("off", False), ("on", True)])
def test_repack_is_the_users_choice_and_recorded(project_dir, tmp_path, flag, expected):
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--repack", flag, "--limit", "2") == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["use_extra_bufts"] is expected


def test_rerun_does_no_new_work(project_dir, tmp_path, capsys):
    out = tmp_path / "run"
    fake_run(project_dir, out)
    before = (out / "records" / "bio-small" / "case_challenges.jsonl").read_bytes()
    capsys.readouterr()
    assert fake_run(project_dir, out) == 0
    assert f"0 examples generated, {2 * N_SAMPLE} already done" in capsys.readouterr().out
    assert (out / "records" / "bio-small" / "case_challenges.jsonl").read_bytes() == before


def test_runs_are_deterministic(project_dir, tmp_path):
    fake_run(project_dir, tmp_path / "a")
    fake_run(project_dir, tmp_path / "b")
    for model in ("general-small", "bio-small"):
        a = [(r.example_id, r.output, r.prompt_hash) for r in records(tmp_path / "a", model)]
        b = [(r.example_id, r.output, r.prompt_hash) for r in records(tmp_path / "b", model)]
        assert a == b
    assert (tmp_path / "a" / "comparison.csv").read_text() == (tmp_path / "b" / "comparison.csv").read_text()


def test_report_rebuilds_from_records_alone(project_dir, tmp_path):
    out = tmp_path / "run"
    fake_run(project_dir, out)
    expected = (out / "comparison.csv").read_text()
    for name in ("results.csv", "comparison.csv", "report.md"):
        (out / name).unlink()
    assert run_cli(project_dir, "report", str(out)) == 0
    assert (out / "comparison.csv").read_text() == expected
    assert (out / "report.md").exists() and (out / "results.csv").exists()


def test_kill_mid_run_then_resume_completes_without_duplicates(project_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeeval.cli", "run", "--pair", "test", "--task", "case_challenges",
           "--engine", "fake", "--models-dir", str(project_dir.parent / "models"), "--out", str(out), "--quiet"]
    # The worker answers ten examples, then holds the eleventh (the gate never opens): the kill lands
    # in the middle of the run however fast or slow the machine is.
    env = fake_engine_env(tmp_path, gate=tmp_path / "gate", gate_after=10)
    proc = subprocess.Popen(cmd, cwd=project_dir, env=env)
    path = out / "records" / "general-small" / "case_challenges.jsonl"
    assert wait_for(lambda: count_lines(path) >= 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_records(path))
    assert 10 <= done_before < N_SAMPLE
    result = subprocess.run(cmd, cwd=project_dir, env={**os.environ}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{2 * N_SAMPLE - done_before} examples generated, {done_before} already done" in result.stdout
    for model in ("general-small", "bio-small"):
        ids = [r.example_id for r in records(out, model)]
        assert len(ids) == N_SAMPLE == len(set(ids))


def test_worker_dies_with_a_killed_run(project_dir, tmp_path):
    # Each answer takes 60 s: a worker that outlived its parent would still be busy with one.
    cmd = [sys.executable, "-m", "edgeeval.cli", "run", "--pair", "test", "--task", "case_challenges",
           "--engine", "fake", "--models-dir", str(project_dir.parent / "models"), "--out", str(tmp_path / "run"),
           "--quiet"]
    log = tmp_path / "generated.log"
    proc = subprocess.Popen(cmd, cwd=project_dir, env=fake_engine_env(tmp_path, delay=60, log=log))
    assert wait_for(lambda: count_lines(log, b"start") >= 1, proc)  # the worker is inside its first answer
    workers = child_pids(proc.pid)
    assert workers, "the run started no worker process"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_native_crash_costs_one_example(project_dir, tmp_path, monkeypatch):
    # The worker segfaults whenever the prompt holds this phrase (one vignette has it).
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", "segv:crushing substernal chest pain")
    out = tmp_path / "run"
    assert fake_run(project_dir, out) == 0
    for model in ("general-small", "bio-small"):
        recs = records(out, model)
        assert len(recs) == N_SAMPLE
        crashed = [r for r in recs if r.error]
        assert [r.example_id for r in crashed] == ["cc-001"]
        assert "SIGSEGV" in crashed[0].error and crashed[0].output is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["bio-small"]["restarts"] == 2  # retried once, then recorded
    with open(out / "results.csv") as handle:
        rates = {(r["model"], r["metric"]): float(r["value"]) for r in csv.DictReader(handle)}
    assert rates[("bio-small", "error_rate")] == pytest.approx(1 / N_SAMPLE)


def test_prompt_longer_than_context_is_recorded_not_truncated(project_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    long_case = "The patient reports fatigue. " * 2000
    rows = [{"question": long_case, "options": {"A": "x", "B": "y"}, "answer_idx": "A"},
            {"question": "Short case?", "options": {"A": "x", "B": "y"}, "answer_idx": "B"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--data", f"case_challenges={data}") == 0
    recs = {r.example_id: r for r in records(out, "bio-small")}
    assert recs["long-1"].error.startswith("prompt_too_long") and recs["long-1"].output is None
    assert recs["long-1"].error_kind is ErrorKind.PROMPT_TOO_LONG and recs["long-1"].finish_reason == "error"
    assert recs["long-2"].error is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--pair", "nope", "--task", "case_challenges"], "unknown pair 'nope'"),
        (["run", "--pair", "test", "--task", "nope"], "unknown task 'nope'"),
        (["run", "--pair", "test", "--task", "case_challenges", "--data", "case_challenges=/nonexistent.csv"],
         "/nonexistent.csv"),
        (["run", "--pair", "test", "--task", "case_challenges", "--data", "oops"], "TASK=PATH"),
    ],
)
def test_bad_input_exits_2_with_one_line(project_dir, capsys, args, message):
    code = run_cli(project_dir, *args, "--engine", "fake", "--models-dir", str(project_dir.parent / "models"))
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_and_invalid_model_files(project_dir, tmp_path, capsys):
    models = project_dir.parent / "models"
    (models / "bio.gguf").unlink()
    assert fake_run(project_dir, tmp_path / "run") == 2
    assert "bio.gguf" in capsys.readouterr().err
    (models / "bio.gguf").write_bytes(b"PK\x03\x04 this is a zip file, not a model")
    assert fake_run(project_dir, tmp_path / "run") == 2
    assert "not a GGUF" in capsys.readouterr().err
    (models / "bio.gguf").write_bytes((models / "general.gguf").read_bytes()[:200])
    assert fake_run(project_dir, tmp_path / "run") == 2
    assert "truncated" in capsys.readouterr().err


def test_row_missing_a_field_names_file_and_line(project_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}\n'
                    '{"question": "q2", "options": {"A": "x", "B": "y"}}\n')
    assert fake_run(project_dir, tmp_path / "run", "--data", f"case_challenges={data}") == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and "answer_idx" in err


def test_template_with_undefined_variable(project_dir, tmp_path, capsys):
    (project_dir / "prompts" / "case_challenge.j2").write_text("{{ question }} {{ vignette_age }}")
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "vignette_age" in err and "case_challenge.j2" in err


def test_models_verify_and_tasks_listing(project_dir, capsys):
    assert run_cli(project_dir, "models", "--verify", "--models-dir", str(project_dir.parent / "models")) == 0
    out = capsys.readouterr().out
    assert "general-small" in out and "Q4_K_M" in out and "sha256" in out
    assert run_cli(project_dir, "tasks") == 0
    assert "case_challenges" in capsys.readouterr().out


@pytest.mark.parametrize("load, warned", [(1.5, False), (2.0, True), (6.0, True)])
def test_busy_machine_warning(monkeypatch, capsys, load, warned):
    from edgeeval import cli

    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(cli, "usable_cpus", lambda: 2)  # e.g. 2 CPUs of a bigger host (affinity, cgroup quota)
    cli.warn_if_busy("llama")
    cli.warn_if_busy("fake")  # the fake engine has no threads to fight over
    err = capsys.readouterr().err
    assert (f"the machine is busy (load {load:.1f} on 2 CPUs)" in err) == warned
    assert err.count("warning") == int(warned)


def test_retry_errors_redoes_only_the_failed_examples(project_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", "segv:crushing substernal chest pain")
    assert fake_run(project_dir, out) == 0
    monkeypatch.delenv("EDGEEVAL_FAULT_INJECT")
    assert fake_run(project_dir, out) == 0  # a plain resume keeps the error records
    assert fake_run(project_dir, out, "--retry-errors") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "examples generated" in line]
    assert lines[1].startswith("0 examples generated, 72 already done")
    assert lines[2].startswith("2 examples generated, 70 already done, 0 errors")
    from edgeeval.scoring.records import load_current_records

    _, frame = load_current_records(out)
    assert frame.height == 72 and frame["error"].null_count() == 72  # the new answers replaced the errors
    assert json.loads((out / "manifest.json").read_text())["invocations"][-1]["retry_errors"] is True
    assert fake_run(project_dir, out, "--retry-errors") == 0  # nothing failed any more: nothing to do
    assert "0 examples generated, 72 already done" in capsys.readouterr().out
