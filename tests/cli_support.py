"""Running the command line inside a project directory, as a user in that directory would; and hooks
into the fake engine of CLI subprocesses, so that a test waits for what happens, not for a while."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from edgeeval.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(project: Path, *args: str) -> int:
    """`edgeeval ARGS...` with `project` as the working directory; returns the exit status."""
    cwd = os.getcwd()
    os.chdir(project)
    try:
        return main(list(args))
    finally:
        os.chdir(cwd)


FAKE_ENGINE_HOOKS_SITECUSTOMIZE = '''
import hashlib, os, sys, time
_log = os.environ.get("EDGEEVAL_TEST_GENERATION_LOG")
_gate = os.environ.get("EDGEEVAL_TEST_GATE")
if _log or _gate:
    from edgeeval.engine import fake as _fake
    _generate = _fake.FakeModel.generate
    _gate_after = int(os.environ.get("EDGEEVAL_TEST_GATE_AFTER", "0"))
    _closed_delay = float(os.environ.get("EDGEEVAL_TEST_GATE_CLOSED_DELAY_S", "0"))
    _answers = [0]

    def _note(event, prompt):
        if not _log:
            return
        line = event + " " + hashlib.sha256(prompt.encode()).hexdigest()[:16] + "\\n"
        fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line.encode())
        os.close(fd)

    def _hooked(self, prompt, max_tokens, stop, speculative=None):
        _answers[0] += 1
        if _gate and _closed_delay and not os.path.exists(_gate):
            time.sleep(_closed_delay)  # slow answers while the gate is closed, full speed once it opens
        if _gate and _answers[0] > _gate_after:  # hold this answer until the test opens the gate
            deadline = time.monotonic() + 600
            while not os.path.exists(_gate) and time.monotonic() < deadline:
                time.sleep(0.005)
        _note("start", prompt)
        result = _generate(self, prompt, max_tokens, stop, speculative)
        _note("done", prompt)
        return result

    _fake.FakeModel.generate = _hooked

_hold = os.environ.get("EDGEEVAL_TEST_REPORT_HOLD")
if _hold and "edgeeval.cli" in sys.orig_argv:  # the CLI process, not its workers
    import edgeeval.report as _report
    _build_report, _replace = _report.build_report, os.replace
    _renames = [None]  # None until the report starts

    def _report_started(*args, **kwargs):
        _renames[0] = 0
        return _build_report(*args, **kwargs)

    def _held_replace(src, dst, *args, **kwargs):
        if _renames[0] is not None:
            _renames[0] += 1
            if _renames[0] == int(_hold):  # its temporary file is written, not yet renamed: hold here
                fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.write(fd, b"report-held " + os.path.basename(str(dst)).encode() + b"\\n")
                os.close(fd)
                time.sleep(600)
        return _replace(src, dst, *args, **kwargs)

    _report.build_report = _report_started
    os.replace = _held_replace
'''


compile(FAKE_ENGINE_HOOKS_SITECUSTOMIZE, "sitecustomize.py", "exec")  # Python skips a broken one silently


def fake_engine_env(tmp_path: Path, *, delay: float = 0.0, log: Path | None = None, gate: Path | None = None,
                    gate_after: int = 0, report_hold: int | None = None) -> dict[str, str]:
    """An environment for CLI subprocesses on the fake engine (the CLI and its workers):
    - `delay`: seconds per answer (EDGEEVAL_FAKE_DELAY_S);
    - `log`: every answer a worker starts and finishes is appended to this file ("start <hash>",
      "done <hash>"), so a test can count units begun against records written;
    - `gate`: each worker gives `gate_after` answers, then holds the next one until the file `gate`
      exists (create it to let the run go on; a held worker gives up after 10 minutes). With
      EDGEEVAL_TEST_GATE_CLOSED_DELAY_S set too, each answer given while the gate is closed takes that long;
    - `report_hold` (needs `log`): the CLI, writing its report, stops before it renames its
      `report_hold`-th file into place (the file's temporary copy is written), notes "report-held
      <name>" in the log and waits there (10 minutes), to be killed in the middle of the report."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(FAKE_ENGINE_HOOKS_SITECUSTOMIZE)
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "EDGEEVAL_FAKE_DELAY_S": str(delay)}
    if log is not None:
        env["EDGEEVAL_TEST_GENERATION_LOG"] = str(log)
    if gate is not None:
        env["EDGEEVAL_TEST_GATE"] = str(gate)
        env["EDGEEVAL_TEST_GATE_AFTER"] = str(gate_after)
    if report_hold is not None:
        assert log is not None, "the hold is noted in the log"
        env["EDGEEVAL_TEST_REPORT_HOLD"] = str(report_hold)
    return env


def count_lines(path: Path, prefix: bytes = b"") -> int:
    """Complete lines of `path` (0 when it does not exist yet) that start with `prefix`."""
    if not path.exists():
        return 0
    return sum(line.startswith(prefix) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n"))


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until predicate() or the process ends; True if the predicate came first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.003)
    raise AssertionError("the run made no progress")
