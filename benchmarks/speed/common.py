"""What every part of the benchmark shares: where things are, the run's fixed settings, the machine's description."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from .jsonable import optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUN_PY = HERE / "run.py"
RESULTS = HERE / "results.json"
CASES = ROOT / "benchmarks" / "clinical" / "data" / "case_challenges_sample.csv"
PEERS_DIR = Path(os.environ.get("EDGEEVAL_PEERS_DIR", Path.home() / ".cache" / "edgeeval" / "peers"))
LMEVAL_VENV = Path(os.environ.get("EDGEEVAL_LMEVAL_VENV", "/tmp/peers/lmeval-venv"))
N_ITEMS = 30
SHOTS = 3
BATCH_SIZES = (1, 2, 4, 8, 16)
# llama-perplexity --multiple-choice as its README runs it: 128 sequences over a unified cache of
# 128 x 32 = 4096 cells, one 4096-token batch. edgeeval gets the same cache size.
PPL_ARGS = ["--multiple-choice", "-np", "128", "-kvu", "-c", "32", "-b", "4096"]
LOGLIK_CTX = 4096


def say(tag: str, message: str) -> None:
    """A progress line on stderr, `[tag] message` (stdout keeps the results)."""
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass(kw_only=True)
class Machine:
    cpu: str
    logical_cpus: int | None
    usable_cpus: int
    python: str
    llama_cpp_python: str
    load_average: tuple[float, float, float]
    system_info: str
    load_average_end: tuple[float, float, float] | None = optional()


def machine() -> Machine:
    import llama_cpp

    from edgeeval.engine.machine import cpu_model, usable_cpus

    return Machine(cpu=cpu_model(), logical_cpus=os.cpu_count(), usable_cpus=usable_cpus(),
                   python=platform.python_version(),
                   llama_cpp_python=llama_cpp.__version__, load_average=os.getloadavg(),
                   system_info=llama_cpp.llama_print_system_info().decode(errors="replace").strip())
