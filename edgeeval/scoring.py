"""Scoring: a run directory's records in, one row per (model, task, example) with its parsed answer out."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from edgeeval.errors import DataError
from edgeeval.parsing import parse_choice
from edgeeval.runner import load_manifest
from edgeeval.store import read_records

RECORD_COLUMNS = ["model", "task", "example_id", "gold", "output", "error", "prompt", "options",
                  "finish_reason", "n_prompt_tokens", "n_output_tokens", "seconds"]


def load_current_records(run_dir: Path) -> tuple[dict, pl.DataFrame]:
    """The manifest and the records that belong to the run's current models and tasks (files
    may also hold records of an older model file or task version; those are left out), the last
    record winning when an example was retried."""
    manifest = load_manifest(run_dir)
    if not manifest:
        raise DataError(f"{run_dir} is not an edgeeval run directory (no manifest.json)")
    rows = []
    for model, meta in manifest.get("models", {}).items():
        for task, tmeta in manifest.get("tasks", {}).items():
            path = run_dir / "records" / model / f"{task}.jsonl"
            if not path.exists():
                continue
            latest = {}
            for record in read_records(path):
                if record.model_sha256 == meta["sha256"] and record.task_hash == tmeta["hash"]:
                    latest[record.example_id] = record
            rows.extend(r.model_dump() for r in latest.values())
    if not rows:
        return manifest, pl.DataFrame(schema={c: pl.Utf8 for c in ("model", "task", "example_id", "gold")})
    frame = pl.DataFrame([{c: r.get(c) for c in RECORD_COLUMNS if c != "options"} for r in rows])
    parsed = [_parse(r) for r in rows]
    return manifest, frame.with_columns(pl.Series("parsed", parsed, dtype=pl.Utf8))


def _parse(record: dict) -> str | None:
    if record.get("error") is not None or record.get("output") is None:
        return None
    options = record.get("options") or {}
    return parse_choice(record["output"], list(options), options)
