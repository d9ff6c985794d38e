"""A process's output, wall time and peak RSS."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path


def run_timed(cmd: list[str], env: dict | None = None, merge_stderr: bool = True) -> tuple[str, float, float]:
    """Output, wall seconds and peak RSS (MB) of a process, run under GNU time.

    Not os.wait4's own rusage: a child started from this (large) process inherits its high-water
    RSS across fork and exec; GNU time is small, so what it reports is the command's own."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", timing.name, *cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge_stderr else None, env=env)
        seconds = time.perf_counter() - t0
        report = Path(timing.name).read_text()
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed with status {proc.returncode}:\n{out[-3000:]}")
    kbytes = next(int(line.split(":")[1]) for line in report.splitlines() if "Maximum resident set size" in line)
    return out, seconds, kbytes / 1024
