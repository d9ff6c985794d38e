"""The engine boundary: what the runner asks of a model, and what it gets back."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class EngineSettings:
    """How a model is loaded and run; recorded in the manifest so a run can be reproduced."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 0
    """0 means one thread per physical core."""
    seed: int = 0
    n_gpu_layers: int = -1
    """-1 offloads every layer when llama.cpp was built with a GPU backend."""
    use_extra_bufts: bool | None = None
    """Weight repacking; None decides per CPU (off on Intel AMX, where it crashes llama_decode)."""
    unit_timeout_s: float = 3600.0
    """A single generation taking longer than this is stopped and recorded as an error."""
    backend: str = "llama"
    """'llama' (llama.cpp) or 'fake' (the deterministic stand-in used by tests; no model is read)."""
    fake_delay_s: float = 0.0
    """With the fake backend: seconds per answer, so tests can interrupt a run mid-way."""

    def resolved(self) -> "EngineSettings":
        values = asdict(self)
        if self.n_threads <= 0:
            values["n_threads"] = physical_cores()
        if self.use_extra_bufts is None:
            values["use_extra_bufts"] = not cpu_has_amx()
        return EngineSettings(**values)


@dataclass(frozen=True)
class Generation:
    """One answer, or the reason there is none (`error`)."""

    text: str | None
    n_prompt_tokens: int | None = None
    n_output_tokens: int | None = None
    finish_reason: str | None = None
    """'stop' (end of turn or a stop string), 'length' (max_tokens), 'context' (window full), or 'error'."""
    seconds: float = 0.0
    error: str | None = None
    notes: dict = field(default_factory=dict)


class Engine(Protocol):
    """A loaded model. Implementations: the llama.cpp worker and the fake used by fast tests."""

    def info(self) -> dict: ...

    def generate(self, prompt: str, max_tokens: int, stop: list[str]) -> Generation: ...

    def close(self) -> None: ...


def physical_cores() -> int:
    """Physical cores (llama.cpp is slower with hyper-threads); falls back to the logical count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return os.cpu_count() or 1
    cores = set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and core is not None:
            cores.add((physical, core))
            physical = core = None
    if core is not None:
        cores.add((physical, core))
    return len(cores) or os.cpu_count() or 1


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return " amx_" in handle.read()
    except OSError:
        return False
