"""`--repack auto`: llama.cpp's weight repacking chosen per model file and CPU by a short measurement, weighed by
the run's own mix of prompt and generated tokens.

Repacking trades prompt speed against generation speed differently on each CPU and quantization (on a 2-core
AMD EPYC it cost Qwen2.5 1.5B about a third of its prompt speed and gained a fifth in generation). So the model
is loaded both ways in a worker and `Engine.calibrate` times a few hundred prompt tokens and a few generated
ones each way. The speeds are kept in the user cache (repack.json), keyed by the file's sha256, the CPU, the
threads and llama.cpp's build, so a model is measured once per machine. Each run then weighs them by what it
plans to do: the prompt tokens it will decode (a prompt's prefix shared with the one before it is not decoded
again) and the tokens it will generate (half of each generation task's max_tokens, as benchmarks/scale
assumes), and takes the faster. On Intel AMX repacking crashes llama_decode: it stays off, unmeasured. The
manifest records the speeds, the mix and the choice (engine.MODEL.repack).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from edgeeval.config.sha256_cache import cache_dir
from edgeeval.engine import Engine, EngineSettings
from edgeeval.engine.machine import cpu_has_amx, cpu_model
from edgeeval.run.planning import PreparedModel, PreparedTask, Unit

CALIBRATION_PROMPT_TOKENS = 384
CALIBRATION_GEN_TOKENS = 24
GENERATED_SHARE = 0.5
"""Of a generation task's max_tokens, the share a run is planned to generate (benchmarks/scale's assumption)."""


@dataclass(frozen=True)
class Mix:
    """What a run plans to do with a model: prompt characters to decode and tokens to generate."""

    prompt_chars: int
    generated_tokens: float

    def seconds(self, rates: dict[str, float]) -> float:
        prompt_tokens = self.prompt_chars / max(1e-9, rates["chars_per_token"])
        return prompt_tokens / rates["prompt_tokens_per_s"] + self.generated_tokens / rates["gen_tokens_per_s"]


def planned_mix(pending: list[tuple[PreparedTask, Unit]]) -> Mix:
    """The run's work on one model, in the order it is answered: each prompt's characters past what it shares with
    the prompt before it (what the caches do not hold already), and GENERATED_SHARE of max_tokens per generation."""
    chars, generated, previous = 0, 0.0, ""
    for task, unit in pending:
        texts = [unit.prompt + text for _, text in unit.continuations] if task.mode == "loglik" else [unit.prompt]
        for text in texts:
            chars += len(text) - len(os.path.commonprefix([previous, text]))
            previous = text
        if task.mode == "generate":
            generated += GENERATED_SHARE * task.spec.max_tokens
    return Mix(prompt_chars=chars, generated_tokens=generated)


def cache_key(model: PreparedModel, settings: EngineSettings) -> str:
    """The model file, the CPU, the threads and llama.cpp's version (llama-cpp-python pins the llama.cpp it builds)."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"{model.sha256}|{cpu_model()}|threads={settings.resolved().n_threads}|llama-cpp-python {version}"


def measured_rates(model: PreparedModel, settings: EngineSettings, engine_factory: Callable[[Path, EngineSettings], Engine],
                   cache_file: Path | None = None) -> tuple[dict[str, dict[str, float]], bool, str]:
    """The model's speeds with repacking on and off: from the cache, else measured now (and cached). Returns
    (speeds by 'on'/'off', whether they came from the cache, the cache key)."""
    path = cache_file or cache_dir() / "repack.json"
    key = cache_key(model, settings)
    cached = _read(path).get(key)
    if isinstance(cached, dict) and set(cached) == {"on", "off"}:
        return cached, True, key
    measured: dict[str, dict[str, float]] = {}
    for on in (True, False):
        engine = engine_factory(model.path, replace(settings, use_extra_bufts=on, n_ctx=min(model.n_ctx, 2048)))
        try:
            measured["on" if on else "off"] = engine.calibrate(CALIBRATION_PROMPT_TOKENS, CALIBRATION_GEN_TOKENS)
        finally:
            engine.close()
    _write(path, key, measured)
    return measured, False, key


def choose_repack(model: PreparedModel, settings: EngineSettings, pending: list[tuple[PreparedTask, Unit]],
                  engine_factory: Callable[[Path, EngineSettings], Engine],
                  cache_file: Path | None = None) -> tuple[EngineSettings, dict[str, Any]]:
    """The settings to load the model with, and what the manifest records of the choice: measured where the user
    left --repack at auto (use_extra_bufts None), the user's own choice otherwise; on Intel AMX off, unmeasured."""
    if settings.use_extra_bufts is not None:
        return settings, {"mode": "on" if settings.use_extra_bufts else "off", "use_extra_bufts": settings.use_extra_bufts}
    if cpu_has_amx():
        return replace(settings, use_extra_bufts=False), {
            "mode": "auto", "use_extra_bufts": False, "why": "Intel AMX: repacking crashes llama_decode there"}
    rates, cached, key = measured_rates(model, settings, engine_factory, cache_file)
    mix = planned_mix(pending)
    seconds = {name: mix.seconds(rates[name]) for name in ("on", "off")}
    chosen = seconds["on"] <= seconds["off"]
    return replace(settings, use_extra_bufts=chosen), {
        "mode": "auto", "use_extra_bufts": chosen, "calibration": rates, "from_cache": cached, "cache_key": key,
        "planned": {"prompt_chars": mix.prompt_chars, "generated_tokens": mix.generated_tokens},
        "planned_seconds": seconds}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measured again (and written whole)
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, rates: dict[str, dict[str, float]]) -> None:
    """Add one model's speeds to the cache file, atomically (a crash leaves the old file or the new one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read(path), key: rates}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".repack-", delete=False) as handle:
            json.dump(data, handle, indent=1)
        os.replace(handle.name, path)
    except OSError:
        pass  # a read-only cache: measured again next time
