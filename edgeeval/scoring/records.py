"""Scoring: a run directory's records in, one row per (model, task, example) with its parsed answer out."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from edgeeval import kinds
from edgeeval.data.permute import original_key
from edgeeval.errors import DataError
from edgeeval.kinds.base import best_option
from edgeeval.retrieval.audit import COLUMNS as RETRIEVAL_COLUMNS
from edgeeval.retrieval.audit import audit_columns
from edgeeval.run.score_cache import bertscore_key, read_bertscores
from edgeeval.run.store import Manifest, Record, TaskEntry, current_records, load_manifest

RECORD_COLUMNS = ["model", "task", "example_id", "repeat", "rotation", "gold", "output", "error", "error_kind", "prompt", "options",
                  "mode", "finish_reason", "n_prompt_tokens", "n_output_tokens", "seconds"]
# Added per row from the task's manifest entry, so the metrics know what to compute.
TASK_COLUMNS = {"kind": pl.String, "metrics": pl.String, "rouge_stemmer": pl.Boolean}
PARSED_COLUMNS = {"parsed": pl.String, "parsed_lenient": pl.String, "unoffered_choice": pl.String,
                  "truncated": pl.Boolean}
# Where the answer and gold stood among the options shown (multiple choice and label tasks), the option the answer
# names under a rotation (--permute), and loglik's per-option scores in the order shown: position bias and PriDe.
POSITION_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "rotation": pl.Int64, "answer_position": pl.Int64, "gold_position": pl.Int64, "n_options": pl.Int64,
    "answer_original": pl.String, "option_logprobs": pl.List(pl.Float64), "option_keys": pl.List(pl.String)}
BERTSCORE_COLUMNS = {"bertscore_precision": pl.Float64, "bertscore_recall": pl.Float64, "bertscore_f1": pl.Float64}


def load_current_records(run_dir: Path) -> tuple[Manifest, pl.DataFrame]:
    """The manifest and the records that belong to the run's current models and tasks (files
    may also hold records of an older model file or task version; those are left out), the last
    record winning when an example was retried. Everything comes from the run directory (records and
    the manifest's task entries: kind, labels, metrics), never from the data files."""
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise DataError(f"{run_dir} is not an edgeeval run directory (no manifest.json)")
    rows: list[dict] = []
    bertscores = BertScores(run_dir, manifest)
    for model in manifest.models:
        for task, entry in manifest.tasks.items():
            rows.extend({**_row(record.model_dump(), entry), **bertscores.columns(task, record)}
                        for record in current_records(run_dir, manifest, model, task))
    if not rows:
        return manifest, pl.DataFrame(schema={c: pl.Utf8 for c in ("model", "task", "example_id", "gold")})
    typed: dict[str, pl.DataType | type[pl.DataType]] = {**TASK_COLUMNS, **PARSED_COLUMNS, **POSITION_COLUMNS,
                                                         **RETRIEVAL_COLUMNS, **BERTSCORE_COLUMNS}
    schema = {**{c: None for c in RECORD_COLUMNS if c != "options"}, **typed}
    frame = pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema_overrides=typed)
    return manifest, frame


class BertScores:
    """The BERTScores the run computed (edgeeval.run.bertscore), looked up per answer; none when it computed none
    (the metric is then reported as not computed, never as 0)."""

    def __init__(self, run_dir: Path, manifest: Manifest):
        self.status = manifest.scoring.get("bertscore") or {}
        self.cache = read_bertscores(run_dir) if self.status.get("computed") else {}

    def columns(self, task: str, record: Record) -> dict[str, float | None]:
        scorer = (self.status.get("scorers") or {}).get(task)
        if not self.status.get("computed") or scorer is None:
            return {}
        if record.error is not None or not (record.output or "").strip():
            return dict.fromkeys(BERTSCORE_COLUMNS, 0.0)  # no answer scores 0, as an empty summary's ROUGE
        key = bertscore_key(record.model, task, record.example_id, record.repeat, (record.output or "").strip(),
                            record.gold, scorer, bool(self.status.get("idf")))
        found = self.cache.get(key)
        return {} if found is None else dict(zip(BERTSCORE_COLUMNS, found))


def _row(record: dict, task: TaskEntry) -> dict:
    """A record with its task's settings and its parsed answer."""
    kind = kinds.get(task.kind)
    prefix = task.reply_prefix or ""
    parsed = parse_answer(record, kind.name, task.labels, task.answer_rule or "lenient", prefix)
    lenient = parse_answer(record, kind.name, task.labels, "lenient", prefix)
    unoffered = (kind.unoffered_choice(_reply(record, kind, prefix), list(record.get("options") or {}))
                 if kind.unoffered_choice and parsed is None and record.get("error") is None
                 and record.get("output") is not None else None)
    return {**record, "kind": kind.name, "metrics": ",".join(task.metrics) or None,
            "rouge_stemmer": task.rouge_stemmer, "parsed": parsed, "parsed_lenient": lenient,
            "unoffered_choice": unoffered, "truncated": record.get("truncation") is not None,
            **position_columns(record, kind, task.labels, parsed), **audit_columns(record.get("retrieval"))}


def position_columns(record: dict, kind: kinds.Kind, labels: list[str], parsed: str | None) -> dict:
    """For a kind whose answer is one of the options shown (multiple choice, labels): the positions (from 0) of the
    answer and of gold among them, their number, the original option the answer names (through the record's
    `option_order` under a rotation), and in loglik mode each option's score (the one that decides) in that order."""
    if not (kind.lettered or kind.uses_labels):
        return {}
    order = record.get("option_order")
    shown = list(record.get("options") or {}) if kind.lettered else list(order or labels)
    if not shown:
        return {}
    scores = record.get("scores") if record.get("mode") == "loglik" else None
    field = "mean_logprob" if record.get("normalization") == "mean" else "logprob"
    logprobs = [float(scores[key][field]) for key in shown] if scores and all(k in scores for k in shown) else None
    return {"answer_position": shown.index(parsed) if parsed in shown else None,
            "gold_position": shown.index(record["gold"]) if record["gold"] in shown else None,
            "n_options": len(shown), "option_logprobs": logprobs, "option_keys": shown,
            "answer_original": original_key(parsed, shown, order) if order else parsed}


def parse_answer(record: dict, kind: str, labels: list[str], rule: str = "lenient", prefix: str = "") -> str | None:
    """What the reply answers, in the form gold has: an option letter, a label, the summary text, the
    ICD codes joined by ';'. None when the engine failed or no answer can be read. `rule`: 'lenient' (the kind's
    parser) or 'clue' (CLUE's rule for the task); `prefix`: the task's reply prefix, which began the reply."""
    output = record.get("output")
    if record.get("error") is not None:
        return None
    if record.get("mode") == "loglik":
        # Nothing to parse: the answer is the best-scored option, recomputed from the record's scores.
        scores = record.get("scores")
        return best_option(scores, record.get("normalization") or "mean") if scores else None
    if output is None:
        return None
    declared = kinds.get(kind)
    parse = declared.clue_parse if rule == "clue" and declared.clue_parse is not None else declared.parse
    return parse(_reply(record, declared, prefix), record.get("options") or {}, labels, record["gold"])


def _reply(record: dict, kind: kinds.Kind, prefix: str) -> str:
    """What the parser reads: the cue that began the reply, then what the model generated."""
    return prefix + record["output"] if kind.reads_reply_prefix else record["output"]
