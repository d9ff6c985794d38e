"""How long a run's start spends on a model's sha256: the first time (read and hashed) and the next (cache).

    python benchmarks/sha256_cache.py FILE [--repeat 3]

FILE is any big file (make one with `head -c 4G /dev/urandom > /tmp/4g.bin`). The cache goes to a
temporary directory; before the first call the file is dropped from the page cache (posix_fadvise),
so that call reads the disk as a run after a reboot would.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeeval.config.sha256_cache import cached_sha256  # noqa: E402


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(path: Path, cache: Path) -> tuple[float, str]:
    started = time.perf_counter()
    digest = cached_sha256(path, cache)
    return time.perf_counter() - started, digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="cache hits to time after the first call")
    args = parser.parse_args()
    size = args.file.stat().st_size
    with tempfile.TemporaryDirectory(prefix="edgeeval-sha256-cache-") as cache:
        drop_from_page_cache(args.file)
        first, digest = timed(args.file, Path(cache))
        hits = [timed(args.file, Path(cache))[0] for _ in range(args.repeat)]
    print(f"{args.file} ({size / 2**30:.2f} GiB) sha256 {digest}")
    print(f"first start (read + hash): {first:.2f} s ({size / first / 1e6:.0f} MB/s)")
    print(f"next starts (cache hit):   {', '.join(f'{hit * 1000:.2f} ms' for hit in hits)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
