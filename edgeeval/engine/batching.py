"""How many sequences `--parallel auto` decodes together: the rule, from the model's size, its context
and the threads (written out in benchmarks/speed/README.md, with the curves it follows).

On a CPU a decode step reads every weight once, whatever the number of sequences in the batch; the
extra sequences cost arithmetic and attention. The larger the weights per thread, the more a step
is bound by memory bandwidth and the more extra sequences come for free: measured here, 16 sequences
gave 1.26x the tokens/s of one on a 135M model (0.1 GB), 1.7x on a 270M model (0.25 GB), and more on
a 1.5B model (1.1 GB, see the benchmark). Each sequence holds its own KV cache, so the number is
capped where the caches together would outgrow the weights."""

from __future__ import annotations

MAX_AUTO_PARALLEL = 16


def auto_parallel(weights_bytes: int, kv_bytes_per_sequence: int | None, threads: int) -> int:
    """Sequences per batch: 4 below 0.2 GB of weights per thread, 8 up to 0.5 GB per thread, 16 from
    there; halved while the sequences' KV caches (each of a full context) would exceed the weights (or 2 GiB)."""
    per_thread = weights_bytes / max(1, threads)
    n = 4 if per_thread < 0.2e9 else 8 if per_thread < 0.5e9 else MAX_AUTO_PARALLEL
    if kv_bytes_per_sequence:
        while n > 1 and n * kv_bytes_per_sequence > max(weights_bytes, 2 << 30):
            n //= 2
    return n
