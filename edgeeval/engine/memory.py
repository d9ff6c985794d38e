"""Will a model's context fit in memory? Estimated from GGUF metadata before llama.cpp allocates it.

llama.cpp allocates (and clears) the whole KV cache when it creates a context: n_ctx = 1,000,000 on a
small model asks for many GiB at once, which takes the machine into swap or the out-of-memory killer
before any error is printed. We refuse such a setting first, with a message naming n_ctx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeeval.engine.machine import available_memory_bytes
from edgeeval.errors import ConfigError

KV_BYTES_PER_VALUE = 2
"""llama.cpp's default cache type is f16 (and swa_full keeps every layer's window at n_ctx)."""
_GIB = 1024**3


def kv_cache_bytes(metadata: dict[str, Any], n_ctx: int) -> int | None:
    """Bytes of the keys and values llama.cpp allocates for `n_ctx` tokens, from a GGUF's metadata
    (`GGUFInfo.metadata`); None when the file does not say enough (no estimate, no check)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return None
    n_layer = _count(metadata.get(f"{arch}.block_count"))
    n_embd = _count(metadata.get(f"{arch}.embedding_length"))
    heads = _per_layer(metadata.get(f"{arch}.attention.head_count"), n_layer)
    kv_key = f"{arch}.attention.head_count_kv"
    kv_heads = _per_layer(metadata.get(kv_key), n_layer) if kv_key in metadata else heads
    if not n_layer or not n_embd or not heads or kv_heads is None:
        return None
    per_token = 0
    for n_head, n_head_kv in zip(heads, kv_heads):
        if n_head <= 0:
            continue
        key = _count(metadata.get(f"{arch}.attention.key_length")) or n_embd // n_head
        value = _count(metadata.get(f"{arch}.attention.value_length")) or n_embd // n_head
        per_token += n_head_kv * (key + value)
    return per_token * KV_BYTES_PER_VALUE * n_ctx


def check_context_fits(model_path: Path | str, metadata: dict[str, Any], n_ctx: int) -> None:
    """Raise ConfigError naming n_ctx when the KV cache alone would not fit in the memory available now
    (weights and compute buffers need more on top: this catches the settings that cannot work)."""
    need = kv_cache_bytes(metadata, n_ctx)
    available = available_memory_bytes()
    if need is None or available is None or need <= available:
        return
    fits = int(available / (need / n_ctx)) // 256 * 256
    hint = f"at most about {fits} would fit" if fits >= 256 else "even the smallest context would not fit"
    raise ConfigError(
        f"{model_path}: n_ctx = {n_ctx} needs about {need / _GIB:.1f} GiB of memory for the KV cache alone, "
        f"but only {available / _GIB:.1f} GiB is available; lower n_ctx for this model in models.toml ({hint})"
    )


def _count(value: Any) -> int | None:
    """A non-negative integer from metadata (hostile files may put anything there)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _per_layer(value: Any, n_layer: int | None) -> list[int] | None:
    """A head count: one number for every layer, or a per-layer array (kept when it has <= 64 items)."""
    if not n_layer:
        return None
    if isinstance(value, list):
        counts = [_count(v) for v in value]
        return counts if len(counts) == n_layer and None not in counts else None  # type: ignore[return-value]
    count = _count(value)
    return [count] * n_layer if count is not None else None

