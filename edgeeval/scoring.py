"""Scoring: a run directory's records in, one row per (model, task, example) with its parsed answer out."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from edgeeval.errors import DataError
from edgeeval.parsing import (
    best_option,
    parse_abstention,
    parse_choice,
    parse_icd_codes,
    parse_label,
    parse_unoffered_choice,
)
from edgeeval.runner import load_manifest
from edgeeval.store import read_records

RECORD_COLUMNS = ["model", "task", "example_id", "gold", "output", "error", "error_kind", "prompt", "options",
                  "mode", "finish_reason", "n_prompt_tokens", "n_output_tokens", "seconds"]
# Added per row from the task's manifest entry, so the metrics know what to compute.
TASK_COLUMNS = {"kind": pl.String, "metrics": pl.String, "rouge_stemmer": pl.Boolean}
PARSED_COLUMNS = {"parsed": pl.String, "unoffered_choice": pl.String, "truncated": pl.Boolean}


def load_current_records(run_dir: Path) -> tuple[dict, pl.DataFrame]:
    """The manifest and the records that belong to the run's current models and tasks (files
    may also hold records of an older model file or task version; those are left out), the last
    record winning when an example was retried. Everything comes from the run directory (records and
    the manifest's task entries: kind, labels, metrics), never from the data files."""
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
            rows.extend(_row(r.model_dump(), tmeta) for r in latest.values())
    if not rows:
        return manifest, pl.DataFrame(schema={c: pl.Utf8 for c in ("model", "task", "example_id", "gold")})
    schema = {**{c: None for c in RECORD_COLUMNS if c != "options"}, **TASK_COLUMNS, **PARSED_COLUMNS}
    frame = pl.DataFrame([{c: r.get(c) for c in schema} for r in rows],
                         schema_overrides={**TASK_COLUMNS, **PARSED_COLUMNS})
    return manifest, frame


def _row(record: dict, task: dict) -> dict:
    """A record with its task's settings and its parsed answer."""
    kind = task.get("kind", "multiple_choice")
    parsed = parse_answer(record, kind, task.get("labels") or [])
    options = list(record.get("options") or {})
    unoffered = (parse_unoffered_choice(record["output"], options)
                 if kind == "multiple_choice" and parsed is None and record.get("error") is None else None)
    return {**record, "kind": kind, "metrics": ",".join(task.get("metrics") or []) or None,
            "rouge_stemmer": bool(task.get("rouge_stemmer", False)), "parsed": parsed,
            "unoffered_choice": unoffered, "truncated": record.get("truncation") is not None}


def parse_answer(record: dict, kind: str, labels: list[str]) -> str | None:
    """What the reply answers, in the form gold has: an option letter, a label, the summary text, the
    ICD codes joined by ';'. None when the engine failed or no answer can be read."""
    output = record.get("output")
    if record.get("error") is not None:
        return None
    if record.get("mode") == "loglik":
        # Nothing to parse: the answer is the best-scored option, recomputed from the record's scores.
        scores = record.get("scores")
        return best_option(scores, record.get("normalization") or "mean") if scores else None
    if output is None:
        return None
    options = record.get("options") or {}
    if kind == "multiple_choice":
        return parse_choice(output, list(options), options)
    if kind == "abstention":
        return parse_abstention(output, options, record["gold"])
    if kind == "label":
        return parse_label(output, labels)
    if kind == "icd_coding":
        return ";".join(parse_icd_codes(output)) or None
    return output.strip() or None
