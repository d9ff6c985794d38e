"""Tables for other tools: results and comparison as CSV and Parquet, the scored records as Parquet."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from edgeeval.files import FILE_MODE, write_private_text


def write_exports(out_dir: Path, results: pl.DataFrame, comparison: pl.DataFrame, records: pl.DataFrame) -> list[Path]:
    """results.csv/.parquet, comparison.csv/.parquet and records.parquet, owner-only; returns the paths."""
    written = []
    for name, frame in (("results", results), ("comparison", comparison)):
        write_private_text(out_dir / f"{name}.csv", frame.write_csv())
        write_parquet(frame, out_dir / f"{name}.parquet")
        written += [out_dir / f"{name}.csv", out_dir / f"{name}.parquet"]
    write_parquet(records_table(records), out_dir / "records.parquet")
    return written + [out_dir / "records.parquet"]


def records_table(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, task, example), sorted, identifying columns first."""
    if not scored.width:
        return scored
    first: list[str] = [c for c in ("model", "task", "example_id", "gold", "parsed") if c in scored.columns]
    rest = [c for c in scored.columns if c not in first]
    return scored.select(first + rest).sort(["model", "task", "example_id"][: len(first)])


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write atomically (temp file + rename), owner-only: records may hold patient text."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        frame.write_parquet(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
