"""Offline and privacy: no code path opens a network connection (checked in every process, and for real
with no network at all), run directories are owner-only whatever the umask, no environment secret is
recorded, and errors name file, line and example id but never echo the patient's text."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgeeval.run.store import read_records

from cli_support import run_cli
from conftest import LLAMA_THREADS

ROOT = Path(__file__).resolve().parent.parent
PATIENT = "Mrs. Quilliam-Oyelaran, 71, MRN 4471-0093"
# Fragments that must never appear in a message, a log or an error field (the name and the record number).
PATIENT_FRAGMENTS = ("Quilliam", "Oyelaran", "4471-0093")


def run_args(project: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--pair", "test", "--task", "case_challenges", "--engine", "fake", "--quiet",
            "--models-dir", str(project.parent / "models"), "--out", str(out), *extra]


def cli(project: Path, args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeeval.cli", *args], cwd=project, capture_output=True,
                          text=True, timeout=300, env=env or dict(os.environ), **kwargs)


def no_patient_text(text: str) -> bool:
    return not any(fragment in text for fragment in PATIENT_FRAGMENTS)


# --- no network ----------------------------------------------------------------------------------------

def test_no_code_path_opens_a_connection_in_process(project_dir, tmp_path, monkeypatch):
    """The whole fast pipeline (run, scoring, statistics, reports, re-report) with every way of reaching
    the network replaced by a failure; the worker's AF_UNIX socket pair needs no connect and still works."""
    attempts = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append((name, args[1:2] if name.startswith("socket.") else args[:1]))
            raise OSError("network access attempted by edgeeval")

        return blocked

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, refuse(name))
    out = tmp_path / "run"
    assert run_cli(project_dir, *run_args(project_dir, out)) == 0
    assert run_cli(project_dir, *["report", str(out)]) == 0
    assert run_cli(project_dir, *["models", "--verify", "--models-dir", str(project_dir.parent / "models")]) == 0
    assert run_cli(project_dir, *["tasks"]) == 0
    assert attempts == []
    assert len(read_records(out / "records" / "bio-small" / "case_challenges.jsonl")) == 36


NETWORK_AUDIT_SITECUSTOMIZE = '''
import os, socket, sys
_log = os.environ["EDGEEVAL_TEST_NETWORK_LOG"]

def _audit(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr") or (
        event in ("socket.connect", "socket.sendto", "socket.sendmsg")
        and args[0].family in (socket.AF_INET, socket.AF_INET6)
    ):
        with open(_log, "a") as handle:
            handle.write(f"{os.getpid()} {event} {args[1:]!r}\\n")
        raise OSError("network access attempted")

sys.addaudithook(_audit)
'''


def audited_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NETWORK_AUDIT_SITECUSTOMIZE)
    log = tmp_path / "network.log"
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "EDGEEVAL_TEST_NETWORK_LOG": str(log)}, log


def test_no_process_of_a_run_touches_the_network(project_dir, tmp_path):
    """The same, audited in every Python process (the CLI and its engine workers) by an audit hook."""
    env, log = audited_env(tmp_path)
    # The hook does see lookups and connection attempts (so silence below means there were none).
    for code in ("import urllib.request as u; u.urlopen('http://example.org/', timeout=1)",
                 "import socket; socket.socket().connect(('192.0.2.1', 80))"):
        probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "network access attempted" in probe.stderr
    seen = log.read_text()
    assert "socket.getaddrinfo" in seen and "socket.connect" in seen
    log.unlink()
    out = tmp_path / "run"
    for args in (run_args(project_dir, out), ["report", str(out)]):
        result = cli(project_dir, args, env)
        assert result.returncode == 0, result.stderr
    assert not log.exists(), log.read_text()


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.real_model
def test_real_demo_runs_with_no_network_at_all(real_models, tmp_path):
    """A network namespace with no interface (not even loopback up): llama.cpp included, nothing needs one."""
    if not unshare_works():
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    edgeeval = Path(sys.executable).with_name("edgeeval")
    assert edgeeval.exists()
    out = tmp_path / "demo"
    result = subprocess.run(["unshare", "-n", str(edgeeval), "demo", "--out", str(out), "--limit", "2",
                             "--max-tokens", "8", "--quiet", "--threads", str(LLAMA_THREADS)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").exists()
    for model in ("gemma3-270m", "smollm2-135m-instruct"):
        recs = read_records(out / "records" / model / "case_challenges.jsonl")
        assert len(recs) == 2 and all(r.error is None for r in recs)


# --- owner-only files, no secrets ----------------------------------------------------------------------

SECRETS = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY", "HF_TOKEN": "hf_SecretTokenDoNotLeak4711",
           "OPENAI_API_KEY": "sk-secret-0815-do-not-record", "DATABASE_PASSWORD": "correct-horse-battery-staple"}


def test_run_files_are_owner_only_whatever_the_umask_and_hold_no_secrets(project_dir, tmp_path):
    out = tmp_path / "shared" / "runs" / "study"  # parents that do not exist yet
    env = {**os.environ, **SECRETS}
    for args in (run_args(project_dir, out), ["report", str(out)]):
        result = cli(project_dir, args, env, umask=0)
        assert result.returncode == 0, result.stderr
    checked = 0
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
        checked += 1
    assert checked > 10
    for parent in (tmp_path / "shared", tmp_path / "shared" / "runs"):  # created by edgeeval, so private too
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, parent
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for name, secret in SECRETS.items():
        assert secret.encode() not in blob and name.encode() not in blob, name


def test_report_elsewhere_is_owner_only_too(project_dir, tmp_path):
    out, report = tmp_path / "run", tmp_path / "share" / "report"
    assert cli(project_dir, run_args(project_dir, out)).returncode == 0
    result = cli(project_dir, ["report", str(out), "--out", str(report)], umask=0)
    assert result.returncode == 0, result.stderr
    for path in [report, *report.rglob("*")]:
        assert stat.S_IMODE(path.lstat().st_mode) == (0o700 if path.is_dir() else 0o600), path


# --- errors name file, line and id, never the patient -----------------------------------------------------


def patient_rows(n: int = 4) -> list[dict]:
    return [{"id": f"pt-{i}", "question": f"{PATIENT} (case {i}) has fever and a new murmur. Next step?",
             "options": {"A": "Blood cultures", "B": "Discharge"}, "answer_idx": "A"} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_row_error_names_file_line_and_not_the_patient(project_dir, tmp_path):
    rows = patient_rows()
    rows[2]["answer_idx"] = "Q"
    data = write_jsonl(tmp_path / "cases.jsonl", rows)
    result = cli(project_dir, run_args(project_dir, tmp_path / "run", "--data", f"case_challenges={data}"))
    assert result.returncode == 2
    assert f"{data}:3:" in result.stderr and result.stderr.count("\n") == 1
    assert no_patient_text(result.stderr), result.stderr


def test_misaligned_cell_is_not_echoed(project_dir, tmp_path):
    rows = patient_rows()
    rows[1]["answer_idx"] = f"{PATIENT} (column shifted)"
    data = write_jsonl(tmp_path / "cases.jsonl", rows)
    result = cli(project_dir, run_args(project_dir, tmp_path / "run", "--data", f"case_challenges={data}"))
    assert result.returncode == 2 and f"{data}:2:" in result.stderr
    assert no_patient_text(result.stderr), result.stderr


def test_prompt_too_long_and_native_crash_records_carry_no_patient_text(project_dir, tmp_path):
    rows = patient_rows()
    rows[0]["question"] = f"{PATIENT} " + "reports fatigue. " * 3000  # over the 4096-token window
    rows[3]["question"] = f"{PATIENT} CRASH-ON-THIS-CASE has chest pain."
    data = write_jsonl(tmp_path / "cases.jsonl", rows)
    out = tmp_path / "run"
    env = {**os.environ, "EDGEEVAL_FAULT_INJECT": "segv:CRASH-ON-THIS-CASE"}
    result = cli(project_dir, run_args(project_dir, out, "--data", f"case_challenges={data}"), env)
    assert result.returncode == 0, result.stderr
    assert no_patient_text(result.stdout + result.stderr), result.stderr  # the CLI and its workers' stderr
    for model in ("general-small", "bio-small"):
        recs = {r.example_id: r for r in read_records(out / "records" / model / "case_challenges.jsonl")}
        assert recs["pt-0"].error.startswith("prompt_too_long") and no_patient_text(recs["pt-0"].error)
        assert recs["pt-3"].error.startswith("native crash") and no_patient_text(recs["pt-3"].error)
    assert no_patient_text((out / "manifest.json").read_text())


def test_template_error_names_example_id_not_the_patient(project_dir, tmp_path):
    (project_dir / "prompts" / "case_challenge.j2").write_text("{{ question }} {{ options.E }}")
    data = write_jsonl(tmp_path / "cases.jsonl", patient_rows())
    result = cli(project_dir, run_args(project_dir, tmp_path / "run", "--data", f"case_challenges={data}"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "pt-0" in result.stderr and "case_challenge.j2" in result.stderr
    assert no_patient_text(result.stderr), result.stderr
