"""Reliability battery: a run survives kill -9 at random moments, native crashes in the engine, a full or
read-only disk, a second run on the same directory, and a context too large for the machine; and the same
run gives the same records twice. The CLI runs on the fake engine in its worker process (real processes,
real signals); the tests marked real_model repeat the key checks on the small real GGUFs."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeeval.engine import EngineSettings, memory
from edgeeval.errors import ConfigError
from edgeeval.run.store import read_records
from edgeeval.scoring.metrics import score_multiple_choice
from edgeeval.scoring.records import load_current_records

from cli_support import count_lines, fake_engine_env, run_cli, wait_for
from conftest import LLAMA_THREADS

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("general-small", "bio-small")
N_SAMPLE = 36
TIMING_FIELDS = ("seconds", "created")


# --- helpers -----------------------------------------------------------------------------------------


def add_task_copy(project: Path, name: str = "case_copy") -> str:
    """A second task: the bundled case challenges again under another name (its own records and hash)."""
    tasks = project / "benchmarks" / "clinical"
    shutil.copy(tasks / "case_challenges.toml", tasks / f"{name}.toml")
    return name


def run_args(project: Path, out: Path, tasks: list[str], *extra: str) -> list[str]:
    args = ["run", "--pair", "test", "--engine", "fake", "--models-dir", str(project.parent / "models"),
            "--out", str(out), "--quiet", *extra]
    for task in tasks:
        args += ["--task", task]
    return args


def cli_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "edgeeval.cli", *args]


def record_files(out: Path) -> list[Path]:
    return sorted((out / "records").glob("*/*.jsonl"))


def complete_records(out: Path) -> list:
    """Every complete record line of the run (a torn last line is not a record); raises on a corrupt line."""
    return [r for path in record_files(out) for r in read_records(path)]


def without_timings(out: Path) -> dict[str, list[dict]]:
    result = {}
    for path in record_files(out):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        for row in rows:
            for name in TIMING_FIELDS:
                row.pop(name)
        result[str(path.relative_to(out))] = rows
    return result


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("edgeeval: error: "), err
    assert "Traceback" not in err
    return err


def rates(out: Path) -> dict[tuple[str, str, str], float]:
    with open(out / "results.csv", encoding="utf-8") as handle:
        return {(r["model"], r["task"], r["metric"]): float(r["value"]) for r in csv.DictReader(handle)}


def generation_log_env(tmp_path: Path, log: Path, delay: float) -> dict[str, str]:
    """An environment whose Python processes (the CLI and its workers) log every answer the fake engine
    starts and finishes, so a test can count units begun against records written."""
    return fake_engine_env(tmp_path, delay=delay, log=log)


# --- kill -9 at random moments -------------------------------------------------------------------------

N_KILLS = 21
KILL_SEED = 20250601
UNIT_DELAY_S = 0.02


def test_kill_minus_9_at_random_moments_then_resume(project_dir, tmp_path):
    """kill -9 of the whole run (CLI and worker) at 21 seeded moments -- while starting, mid-answer,
    after the last record while the report is written -- and re-running resumes each time: no corrupt
    line, no duplicate, at most the in-flight unit recomputed per kill, and the same scores as a run
    that was never interrupted."""
    tasks = ["case_challenges", add_task_copy(project_dir)]
    units = len(MODELS) * len(tasks) * N_SAMPLE
    reference = tmp_path / "reference"
    assert run_cli(project_dir, *run_args(project_dir, reference, tasks)) == 0

    out = tmp_path / "killed"
    log = tmp_path / "generated.log"
    env = generation_log_env(tmp_path, log, UNIT_DELAY_S)
    cmd = cli_cmd(run_args(project_dir, out, tasks))
    rng = random.Random(KILL_SEED)
    kills, phases, lost = 0, {"startup": 0, "answering": 0, "report": 0}, 0
    while kills < N_KILLS:
        before_records = len(complete_records(out)) if out.exists() else 0
        before_started, before_done = count_lines(log, b"start"), count_lines(log, b"done")
        remaining = units - before_records
        phase = "report" if kills == N_KILLS - 1 else rng.choice(["startup", "answering", "answering", "answering"])
        if phase == "answering" and remaining <= 12:
            phase = "startup"
        run_env = env
        if phase == "report":  # after the last record, in the middle of the report files
            run_env = fake_engine_env(tmp_path, delay=UNIT_DELAY_S, log=log, report_hold=rng.randint(1, 4))
        proc = subprocess.Popen(cmd, cwd=project_dir, env=run_env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if phase == "startup":  # loading config, data, models; at the latest when the first answer begins
            deadline = time.monotonic() + rng.uniform(0.0, 0.9)
            while time.monotonic() < deadline and count_lines(log, b"start") == before_started:
                time.sleep(0.002)
        elif phase == "answering":
            target = before_done + rng.randint(1, 10)
            assert wait_for(lambda: count_lines(log, b"done") >= target, proc)
            time.sleep(rng.uniform(0.0, UNIT_DELAY_S))  # somewhere inside the next answer
        else:  # the report: held just before its k-th file is renamed into place (cli_support)
            assert wait_for(lambda: count_lines(log, b"report-held") == 1, proc, timeout=120)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()
            pytest.fail(f"the run finished before kill point {kills + 1}; give it more work")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kills += 1
        phases[phase] += 1

        recs = complete_records(out) if out.exists() else []  # raises on any corrupt complete line
        keys = [r.key() for r in recs]
        assert len(keys) == len(set(keys)), "a unit was recorded twice"
        written, started = len(recs) - before_records, count_lines(log, b"start") - before_started
        assert started - written <= 1, f"kill {kills}: {started} answers begun but only {written} records kept"
        lost += started - written

    result = subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    final = complete_records(out)
    assert len(final) == units == len({r.key() for r in final})
    for path in record_files(out):
        assert path.read_bytes().endswith(b"\n")
    assert count_lines(log, b"start") == units + lost <= units + N_KILLS
    assert without_timings(out) == without_timings(reference)
    for name in ("results.csv", "comparison.csv"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    assert phases["answering"] >= 5 and phases["startup"] >= 2
    print(f"\nkill points survived: {kills} {phases}; answers recomputed: {lost}")


# --- native crashes -------------------------------------------------------------------------------------


def scored(out: Path):
    _, frame = load_current_records(out)
    return score_multiple_choice(frame)


@pytest.mark.parametrize("fault", ["segv", "abort", "exit"])
def test_native_crash_on_one_example_is_an_error_not_a_wrong_answer(project_dir, tmp_path, monkeypatch, fault):
    clean = tmp_path / "clean"
    assert run_cli(project_dir, *run_args(project_dir, clean, ["case_challenges"])) == 0
    table = scored(clean)
    flags = {(r["model"], r["example_id"]): r for r in table.iter_rows(named=True)}
    # Crash on an example the candidate answers correctly, so the error must cost accuracy.
    victim = min(e for (m, e), r in flags.items() if m == "bio-small" and r["correct"])
    prompt = next(r.prompt for r in complete_records(clean) if r.example_id == victim)
    marker = max(prompt.splitlines(), key=len)[:80]  # the start of the case text: unique to this example
    assert sum(marker in r.prompt for r in complete_records(clean)) == 2  # one prompt per model

    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", f"{fault}:{marker}")
    out = tmp_path / "crash"
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    before, after = rates(clean), rates(out)
    for model in MODELS:
        recs = {r.example_id: r for r in read_records(out / "records" / model / "case_challenges.jsonl")}
        assert len(recs) == N_SAMPLE
        failed = [i for i, r in recs.items() if r.error]
        assert failed == [victim]
        assert recs[victim].output is None and recs[victim].error.startswith("native crash: worker ")
        assert manifest["engine"][model]["restarts"] == 2  # retried once on a fresh worker, then recorded
        key = (model, "case_challenges")
        assert after[(*key, "error_rate")] == pytest.approx(1 / N_SAMPLE)
        assert before[(*key, "error_rate")] == 0.0
        # The error counts as a wrong answer, and not as an unparseable one.
        was = flags[(model, victim)]
        assert after[(*key, "accuracy")] * N_SAMPLE == pytest.approx(before[(*key, "accuracy")] * N_SAMPLE - was["correct"])
        assert after[(*key, "invalid_rate")] * N_SAMPLE == pytest.approx(
            before[(*key, "invalid_rate")] * N_SAMPLE - was["invalid"])
    with open(out / "comparison.csv", encoding="utf-8") as handle:
        accuracy = next(r for r in csv.DictReader(handle) if r["metric"] == "accuracy")
    assert int(accuracy["n_paired"]) == N_SAMPLE


def test_crash_while_loading_a_model_says_what_to_change(project_dir, tmp_path, monkeypatch, capsys):
    """The out-of-memory killer strikes while llama.cpp allocates: exit 2 naming n_ctx, earlier work kept."""
    out = tmp_path / "run"
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", "abort:bio.gguf")  # the candidate's worker dies loading
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "bio.gguf" in err and "SIGABRT" in err and "while loading the model" in err
    assert "n_ctx" in err and "models.toml" in err
    assert len(complete_records(out)) == N_SAMPLE  # the baseline's answers are kept
    monkeypatch.delenv("EDGEEVAL_FAULT_INJECT")
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 0
    assert f"{N_SAMPLE} examples generated, {N_SAMPLE} already done" in capsys.readouterr().out


# --- a context the machine cannot hold ------------------------------------------------------------------


def write_big_model_gguf(path: Path, context_length: int = 131072) -> Path:
    """A tiny file whose metadata describes a 70B-class model (80 layers, 8 KV heads of 128)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("big")
    writer.add_context_length(context_length)
    writer.add_block_count(80)
    writer.add_embedding_length(8192)
    writer.add_head_count(64)
    writer.add_head_count_kv(8)
    writer.add_file_type(15)
    writer.add_tensor("token_embd.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_kv_cache_estimate_matches_llama_cpp_arithmetic():
    meta = {"general.architecture": "llama", "llama.block_count": 80, "llama.embedding_length": 8192,
            "llama.attention.head_count": 64, "llama.attention.head_count_kv": 8}
    assert memory.kv_cache_bytes(meta, 131072) == 80 * 131072 * 2 * 8 * 128 * 2  # 40 GiB
    gemma = {"general.architecture": "gemma3", "gemma3.block_count": 18, "gemma3.embedding_length": 640,
             "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": 1,
             "gemma3.attention.key_length": 256, "gemma3.attention.value_length": 256}
    assert memory.kv_cache_bytes(gemma, 4096) == 72 * 1024**2  # llama.cpp: 12 MiB + 60 MiB
    per_layer = {**meta, "llama.block_count": 2, "llama.attention.head_count_kv": [8, 0]}
    assert memory.kv_cache_bytes(per_layer, 10) == 8 * 256 * 2 * 10
    for hostile in ({}, {"general.architecture": 3}, {**meta, "llama.block_count": "80"},
                    {**meta, "llama.block_count": -1}, {**meta, "llama.attention.head_count": True},
                    {**meta, "llama.attention.head_count_kv": [1, 2]}):
        assert memory.kv_cache_bytes(hostile, 4096) is None  # no estimate, no refusal


def test_context_too_large_for_memory_is_refused_before_allocation(project_dir, tmp_path, monkeypatch, capsys):
    models = project_dir.parent / "models"
    write_big_model_gguf(models / "bio.gguf")
    toml = project_dir / "models.toml"
    toml.write_text(toml.read_text().replace('base = "general-small"', 'base = "general-small"\nn_ctx = 131072'))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 8 * 1024**3)
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    out = tmp_path / "run"
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "n_ctx = 131072" in err and "models.toml" in err and "40.0 GiB" in err and "8.0 GiB" in err
    assert "at most about 26112 would fit" in err
    assert len(started) == 1  # the baseline's worker; the candidate's was never started
    assert len(complete_records(out)) == N_SAMPLE


def test_memory_check_with_almost_no_memory_left(monkeypatch):
    # How the memory left is read (MemAvailable, cgroup limits): tests/test_machine.py.
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1024)
    with pytest.raises(ConfigError, match="even the smallest context would not fit"):
        memory.check_context_fits("m.gguf", {"general.architecture": "llama", "llama.block_count": 1,
                                             "llama.embedding_length": 64, "llama.attention.head_count": 1}, 4096)


# --- disk full, read-only disk --------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only): a disk that fills up after a few records."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_disk_full_is_a_clear_error_and_the_records_stay_valid(project_dir, tmpfs, capsys):
    out = tmpfs / "run"
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in err and str(out) in err
    kept = complete_records(out)  # every complete line is a valid record
    assert 0 < len(kept) < 2 * N_SAMPLE
    remount(tmpfs, "size=16m")  # space freed: the same command resumes
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 0
    assert f"{2 * N_SAMPLE - len(kept)} examples generated, {len(kept)} already done" in capsys.readouterr().out
    final = complete_records(out)
    assert len(final) == 2 * N_SAMPLE == len({r.key() for r in final})


@pytest.mark.parametrize("fail_at", ["manifest", "record", "report"])
def test_write_failures_are_one_line_errors(project_dir, tmp_path, monkeypatch, capsys, fail_at):
    """ENOSPC from fsync, injected in-process, wherever the run writes: exit 2, one line, records valid."""
    out = tmp_path / "run"
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        name = Path(target).name
        failing = {"manifest": name == ".manifest.json.tmp", "record": name.endswith(".jsonl"),
                   "report": name.endswith(".tmp") and name != ".manifest.json.tmp"}[fail_at]
        if failing:
            calls["n"] += 1
            if fail_at != "record" or calls["n"] > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in err
    kept = complete_records(out) if (out / "records").exists() else []
    if fail_at == "record":
        assert len(kept) == 5  # the five records written before the disk filled; the sixth is cut off
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 0
    assert len(complete_records(out)) == 2 * N_SAMPLE


def test_any_disk_error_is_a_one_line_error(project_dir, tmp_path, monkeypatch, capsys):
    import edgeeval.report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "records.parquet"))

    monkeypatch.setattr(edgeeval.report, "build_report", full)
    assert run_cli(project_dir, *run_args(project_dir, tmp_path / "run", ["case_challenges"])) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "records.parquet: No space left on device" in err
    assert len(complete_records(tmp_path / "run")) == 2 * N_SAMPLE


def test_read_only_output_directory(project_dir, tmpfs, capsys):
    remount(tmpfs, "size=16m")
    out = tmpfs / "run"
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"], "--limit", "5")) == 0
    snapshot = {p: p.read_bytes() for p in record_files(out)}
    remount(tmpfs, "ro")
    capsys.readouterr()
    for args in (run_args(project_dir, out, ["case_challenges"]), ["report", str(out)],
                 run_args(project_dir, tmpfs / "fresh", ["case_challenges"])):
        assert run_cli(project_dir, *args) == 2, args
        err = one_line_error(capsys.readouterr().err)
        assert "Read-only file system" in err
    assert {p: p.read_bytes() for p in record_files(out)} == snapshot
    remount(tmpfs, "rw")
    assert run_cli(project_dir, *run_args(project_dir, out, ["case_challenges"])) == 0
    assert len({r.key() for r in complete_records(out)}) == 2 * N_SAMPLE


# --- two runs on one directory --------------------------------------------------------------------------


def test_second_run_on_the_same_directory_is_refused(project_dir, tmp_path):
    out = tmp_path / "run"
    cmd = cli_cmd(run_args(project_dir, out, ["case_challenges"]))
    # The first run answers three examples, then holds the fourth until the gate opens: it is surely
    # still running while the second one starts, however slow the machine.
    gate = tmp_path / "gate"
    env = fake_engine_env(tmp_path, gate=gate, gate_after=3)
    first = subprocess.Popen(cmd, cwd=project_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = out / "records" / "general-small" / "case_challenges.jsonl"
        assert wait_for(lambda: count_lines(path) >= 3, first)
        second = subprocess.run(cmd, cwd=project_dir, env={**os.environ}, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = one_line_error(second.stderr)
        assert "in use by another edgeeval process" in err and str(out) in err
        assert first.poll() is None  # the first run was not disturbed
        assert count_lines(path) == 3
        gate.touch()
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert f"{2 * N_SAMPLE} examples generated, 0 already done" in stdout
    final = complete_records(out)
    assert len(final) == 2 * N_SAMPLE == len({r.key() for r in final})


# --- determinism --------------------------------------------------------------------------------------


def test_same_run_twice_gives_identical_records_apart_from_timings(project_dir, tmp_path):
    tasks = ["case_challenges", add_task_copy(project_dir)]
    for name in ("a", "b"):
        assert run_cli(project_dir, *run_args(project_dir, tmp_path / name, tasks)) == 0
    a, b = without_timings(tmp_path / "a"), without_timings(tmp_path / "b")
    assert len(a) == 4 and a == b
    for name in ("results.csv", "comparison.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# --- the same on the real small models ------------------------------------------------------------------


def demo_cmd(out: Path, limit: int, max_tokens: int) -> list[str]:
    return cli_cmd(["demo", "--out", str(out), "--limit", str(limit), "--max-tokens", str(max_tokens), "--quiet",
                    "--threads", str(LLAMA_THREADS)])


@pytest.mark.real_model
def test_real_demo_twice_gives_identical_records(real_models, tmp_path):
    for name in ("a", "b"):
        result = subprocess.run(demo_cmd(tmp_path / name, 3, 16), cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
    a, b = without_timings(tmp_path / "a"), without_timings(tmp_path / "b")
    assert len(a) == 2 and all(len(rows) == 3 for rows in a.values())
    assert a == b
    assert any(row["output"] for rows in a.values() for row in rows)


@pytest.mark.real_model
def test_real_huge_context_is_refused_before_llama_cpp_allocates(real_models, monkeypatch):
    from edgeeval.engine.worker import WorkerEngine

    # 1,000,000 tokens of gemma-3-270m's cache is 17.2 GiB: refused on a machine with 4 GiB free,
    # before any worker starts.
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 4 * 1024**3)
    monkeypatch.setattr(subprocess, "Popen", None)  # starting a worker would fail the test
    with pytest.raises(ConfigError) as caught:
        WorkerEngine(real_models["gemma"], EngineSettings(n_ctx=1_000_000))
    message = str(caught.value)
    assert "n_ctx = 1000000" in message and "17.2 GiB" in message and "models.toml" in message


LLAMA_ALLOCATION_PROBE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # 6 GiB of address space: the cache cannot fit
    from edgeeval.engine import EngineSettings, memory
    from edgeeval.engine.worker import WorkerEngine
    from edgeeval.errors import EdgeevalError
    memory.available_memory_bytes = lambda: 1 << 50  # let llama.cpp try
    try:
        WorkerEngine(sys.argv[1], EngineSettings(n_ctx=1_000_000)).close()
        print("LOADED")
    except EdgeevalError as exc:
        print(type(exc).__name__, exc)
""")


@pytest.mark.real_model
def test_real_llama_cpp_allocation_failure_names_n_ctx(real_models, tmp_path):
    """Past our estimate, llama.cpp's own failure to allocate the cache is still a one-line error."""
    result = subprocess.run([sys.executable, "-c", LLAMA_ALLOCATION_PROBE, str(real_models["gemma"])],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ModelFileError "), result.stdout
    assert "n_ctx" in result.stdout and "1000000" in result.stdout


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_real_kv_cache_estimate_agrees_with_llama_cpp(real_models, name):
    from edgeeval.config.gguf import read_gguf_metadata

    probe = textwrap.dedent("""
        import sys
        from edgeeval.engine import EngineSettings
        from edgeeval.engine.llama import LlamaModel
        LlamaModel(sys.argv[1], EngineSettings(n_ctx=4096, n_threads=1)).close()
    """)
    env = {**os.environ, "EDGEEVAL_LLAMA_LOG": "1"}
    result = subprocess.run([sys.executable, "-c", probe, str(real_models[name])], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    sizes = [float(line.split("size =")[1].split("MiB")[0]) for line in (result.stdout + result.stderr).splitlines()
             if line.startswith("llama_kv_cache: size =")]
    assert sizes, "llama.cpp did not report its KV cache"
    estimate = memory.kv_cache_bytes(read_gguf_metadata(real_models[name]).metadata, 4096)
    assert estimate == pytest.approx(sum(sizes) * 1024**2, rel=0.01)
