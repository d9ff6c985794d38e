"""BERTScore for a run's summaries, computed once the answers are in by the encoder models.toml names ([scoring]
bertscore_model), in a worker process as every model runs, and kept in the run directory (score_cache.py): the
report reads the scores and never runs a model. Without an encoder the manifest says BERTScore was not computed,
and why, and the report shows it so, never as 0."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from edgeeval.config.model_files import checked_model_file
from edgeeval.config.models import Project
from edgeeval.engine import Engine, EngineSettings
from edgeeval.kinds.bertscore import bertscore, idf_weights
from edgeeval.run.score_cache import append_bertscores, bertscore_key, read_bertscores
from edgeeval.run.store import Manifest, Record, RunStore, current_records, load_manifest

METRIC_PREFIX = "bertscore_"
ENCODER_TOKENS = 512
"""A BERT encoder reads at most 512 tokens; a longer text is cut (bert-score cuts it too)."""
REQUEST = 32
"""Texts per request to the encoder's worker (the progress bar moves by this much)."""
SCORER_VERSION = 2
"""Bumped when the scores of the same texts change (2: references stripped too, as bert-score strips them)."""

EngineFactory = Callable[[Path, EngineSettings], Engine]


def wants_bertscore(manifest: Manifest) -> list[str]:
    """The run's tasks that report a BERTScore metric."""
    return [name for name, task in manifest.tasks.items() if any(m.startswith(METRIC_PREFIX) for m in task.metrics)]


def score_run(project: Project, run_dir: Path, settings: EngineSettings, engine_factory: EngineFactory,
              progress: bool = True) -> dict[str, Any] | None:
    """Compute the BERTScores the run's answers still lack and note in the manifest how they were computed (or
    why not); None when no task of the run reports BERTScore."""
    manifest = load_manifest(run_dir)
    if manifest is None or not (tasks := wants_bertscore(manifest)):
        return None
    encoder = project.config.scoring.bertscore_model
    if encoder is None:
        status = {"computed": False, "reason": "no BERTScore encoder: name one in models.toml ([scoring] "
                  "bertscore_model, an encoder GGUF such as a converted SciBERT; see docs/models-and-tasks.md)"}
    else:
        path, info, sha = checked_model_file(project, encoder)
        idf = project.config.scoring.bertscore_idf
        answers = {task: _answered(run_dir, manifest, task) for task in tasks}
        scorers = {task: scorer_id(sha, settings.backend, idf, [r.gold for r in records])
                   for task, records in answers.items()}
        pending = _pending(run_dir, answers, scorers, idf)
        if pending:
            _score(run_dir, pending, engine_factory(path, encoder_settings(settings)), sha, idf, progress)
        status = {"computed": True, "model": encoder, "path": str(path), "sha256": sha, "architecture":
                  info.architecture, "backend": settings.backend, "layer": "last (llama.cpp)", "idf": idf,
                  "max_tokens": ENCODER_TOKENS,
                  "scorers": scorers}
    with RunStore(run_dir) as store:
        current = load_manifest(run_dir) or manifest
        current.scoring = {**current.scoring, "bertscore": status}
        store.write_manifest(current)
    return status


def encoder_settings(settings: EngineSettings) -> EngineSettings:
    """The run's engine settings as an encoder needs them: one 512-token window, per-token vectors only."""
    return replace(settings, n_ctx=ENCODER_TOKENS, n_batch=ENCODER_TOKENS, n_ubatch=ENCODER_TOKENS,
                   embeddings_only=True, speculative="none", draft_model=None, vocab_only=False)


def _answered(run_dir: Path, manifest: Manifest, task: str) -> list[Record]:
    """The task's current answers of every model (an engine failure is no answer: scored as such)."""
    return [record for model in manifest.models for record in current_records(run_dir, manifest, model, task)
            if record.error is None and record.output is not None]


def scorer_id(encoder_sha: str, backend: str, idf: bool, references: list[str]) -> str:
    """What scores depend on besides the texts: the encoder file and what ran it (the tests' fake engine stands in
    for llama.cpp), and with idf the task's set of references."""
    base = f"v{SCORER_VERSION}:{encoder_sha}+{backend}"
    return base if not idf else f"{base}+idf:{_digest(list(dict.fromkeys(references)))}"


def _pending(run_dir: Path, answers: dict[str, list[Record]], scorers: dict[str, str], idf: bool) -> list[Pending]:
    """Per task, the answers without a cached score for this encoder and weighting."""
    cached = read_bertscores(run_dir)
    pending = []
    for task, records in answers.items():
        items = []
        for record in records:
            candidate = (record.output or "").strip()
            key = bertscore_key(record.model, task, record.example_id, record.repeat, candidate, record.gold,
                                scorers[task], idf)
            if key not in cached:
                items.append((key, candidate, record))
        if items:
            pending.append(Pending(task, items, list(dict.fromkeys(r.gold for r in records))))
    return pending


def score_pairs(engine: Engine, pairs: Sequence[tuple[str, str]], references: Sequence[str] | None = None,
                progress: bool = False) -> list[tuple[float, float, float]]:
    """(precision, recall, F1) of each (candidate, reference) pair, the texts prepared as bert-score prepares them
    (stripped; an encoder reads at most 512 tokens); with `references`, idf weights over them (the task's every
    reference, as bert-score computes idf from its reference list)."""
    pairs = [(candidate.strip(), reference.strip()) for candidate, reference in pairs]
    documents = [r.strip() for r in references] if references is not None else []
    embedded = _embed(engine, list(dict.fromkeys([*documents, *(t for pair in pairs for t in pair)])), progress)
    weights = idf_weights([embedded[r] for r in documents]) if references is not None else None
    return [bertscore(embedded[c], embedded[r], weights, len(documents)) for c, r in pairs]


@dataclass(frozen=True)
class Pending:
    task: str
    items: list[tuple[str, str, Record]]
    """(cache key, candidate text, record) per answer to score."""
    references: list[str]
    """Every reference of the task (the idf's documents)."""


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\0".join(sorted(texts)).encode()).hexdigest()[:16]


def _score(run_dir: Path, pending: list[Pending], engine: Engine, encoder_sha: str, idf: bool,
           progress: bool) -> None:
    try:
        for part in pending:
            scores = score_pairs(engine, [(candidate, record.gold) for _, candidate, record in part.items],
                                 part.references if idf else None, progress)
            entries = []
            for (key, candidate, record), (precision, recall, f1) in zip(part.items, scores):
                entries.append({"key": key, "model": record.model, "task": part.task, "example_id": record.example_id,
                                "repeat": record.repeat, "precision": precision, "recall": recall, "f1": f1,
                                "encoder_sha256": encoder_sha, "idf": idf})
            append_bertscores(run_dir, entries)
    finally:
        engine.close()


def _embed(engine: Engine, texts: list[str], progress: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(texts), desc="BERTScore encoder", unit="text", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(texts), REQUEST):
            batch = texts[start:start + REQUEST]
            out.update(zip(batch, engine.token_embeddings(batch)))
            bar.update(len(batch))
    return out
