"""A study: the arms (model runs), the pairs compared, and their scored records, results and paired
comparisons; built from one run directory or from several, with or without prompt and answer text."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from edgeeval import kinds
from edgeeval.errors import EdgeevalError
from edgeeval.run.shard import shard_gaps
from edgeeval.scoring.metrics import (COMPARISON_SCHEMA, REPETITION_SCHEMA, SUMMARY_SCHEMA, compare_pair,
                                      holm_per_metric, repetition_spread, score_records, summarize)
from edgeeval.scoring.drift import DRIFT_SCHEMA, VERDICT_SCHEMA, drift, verdicts
from edgeeval.scoring.records import load_current_records
from edgeeval.scoring.robustness import Robustness, robustness

# Record columns that hold patient or model text; --no-text drops them, and any other string column
# not named in SAFE_STRING_COLUMNS.
TEXT_COLUMNS = ("prompt", "output", "options")
SAFE_STRING_COLUMNS = frozenset({"model", "task", "example_id", "gold", "parsed", "error", "error_kind", "finish_reason",
                                 "kind", "metrics", "unoffered_choice", "answer_original"})
# Gold and parsed answers are kept under --no-text only for tasks whose answers are labels (an option
# letter, "entailment", ICD codes) and only when short; never a reference summary or a free-text answer.
LABEL_KINDS = frozenset(name for name, kind in kinds.KINDS.items() if kind.short_answers)
LABEL_MAX_CHARS = 40
LABEL_MAX_SPACES = 2
WITHHELD = "[text withheld]"


@dataclass(frozen=True)
class Run:
    """One run directory as the report names it."""

    name: str
    path: Path
    manifest: dict


@dataclass(frozen=True)
class Arm:
    """One model in one run: what the charts and tables call a model."""

    label: str
    run: str
    model: str
    meta: dict


@dataclass(frozen=True)
class ArmPair:
    """Two arms compared on the same examples; delta = candidate - baseline."""

    name: str
    baseline: str
    candidate: str


@dataclass(frozen=True)
class Study:
    """Everything a report shows; the renderers only read it."""

    title: str
    runs: list[Run]
    arms: dict[str, Arm]
    pairs: list[ArmPair]
    tasks: dict[str, dict]
    scored: pl.DataFrame
    """One row per (arm, task, example); column `model` holds the arm label."""
    results: pl.DataFrame
    comparison: pl.DataFrame
    has_text: bool = True
    notes: list[str] = field(default_factory=list)
    repetitions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REPETITION_SCHEMA))
    """For tasks asked several times per item: each metric's spread across the repetitions."""
    robustness: Robustness = field(default_factory=lambda: robustness(pl.DataFrame()))
    """Option order: positions answered against gold's, the chosen-letter test, rotations (--permute), PriDe."""
    drift: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DRIFT_SCHEMA))
    """`compare`: per model matched across runs and task, flips, agreement and KL divergence."""
    verdicts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=VERDICT_SCHEMA))
    """`compare`: whether each pair's verdict (sign, Holm significance) is the same in every run."""

    def family(self, arm: str) -> str:
        """'general', 'biomedical' (models.toml), or '' when unknown."""
        meta = self.arms[arm].meta if arm in self.arms else {}
        return meta.get("family") or ""


def score_run(run_dir: Path) -> tuple[dict, pl.DataFrame]:
    """The manifest and one scored row per (model, task, example) of a run directory."""
    manifest, records = load_current_records(run_dir)
    # The report reads the manifest as plain JSON (it shows whatever a run recorded, old or new).
    return manifest.as_json(), score_records(records) if records.height else records


def study_from_run(run_dir: Path, seed: int = 0) -> Study:
    manifest, scored = score_run(run_dir)
    run = Run(run_dir.resolve().name, run_dir, manifest)
    arms = {m: Arm(m, run.name, m, meta) for m, meta in manifest.get("models", {}).items()}
    pairs = [ArmPair(n, p["baseline"], p["candidate"]) for n, p in manifest.get("pairs", {}).items()]
    study = _assemble("edgeeval report", [run], arms, pairs, manifest.get("tasks", {}), scored, seed, [])
    return _one_family(study)


def _one_family(study: Study) -> Study:
    """Pairs of one run share arms (general, general + retrieval, biomedical): their comparisons are one family,
    so p (Holm) adjusts each metric across the tasks of every pair, not of each pair alone."""
    if len(study.pairs) < 2 or not study.comparison.height:
        return study
    note = (f"p (Holm) adjusts each metric across the tasks of all {len(study.pairs)} pairs together "
            "(the pairs share arms, so their comparisons are one family)")
    return replace(study, comparison=holm_per_metric(study.comparison), notes=study.notes + [note])


def study_from_runs(run_dirs: list[Path], seed: int = 0, matches: dict[str, str] | None = None) -> Study:
    """Several runs of the same models side by side: every arm against the first run's arm of the
    same model, and each run's own pairs; examples are paired on their ids within each task. A model is the
    same across runs by `matches` (first run's model -> the other runs' model), else by its entry name, else by
    its `reference` (the published study's name for it, when one model of the other run has it)."""
    tasks: dict[str, dict]
    runs, frames, arms, tasks = [], [], {}, {}
    for name, path in zip(run_labels(run_dirs), run_dirs):
        manifest, scored = score_run(path)
        run = Run(name, path, manifest)
        runs.append(run)
        for model, meta in run.manifest.get("models", {}).items():
            label = f"{run.name}:{model}"
            arms[label] = Arm(label, run.name, model, meta)
        if scored.height:
            frames.append(scored.with_columns(pl.concat_str(pl.lit(f"{run.name}:"), pl.col("model")).alias("model")))
        for task, meta in run.manifest.get("tasks", {}).items():
            tasks.setdefault(task, meta)
    scored = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    across = _cross_run_pairs(runs, matches or {})
    pairs = across + _within_run_pairs(runs)
    title = "edgeeval comparison of " + ", ".join(run.name for run in runs)
    study = _assemble(title, runs, arms, pairs, tasks, scored, seed, _task_drift(runs))
    present = set(scored["model"].unique().to_list()) if scored.height else set()
    moved = [drift(scored, p.name, p.baseline, p.candidate) for p in across if {p.baseline, p.candidate} <= present]
    held = verdicts(study.comparison, _repeated_pairs(runs))
    changed = [f"the verdict changes between runs: pair {r['pair']}, {r['task']}, {r['metric']}: delta "
               f"{r['delta_first']:+.3f} (p Holm {r['p_holm_first']:.3g}) in {r['first_run']}, {r['delta_other']:+.3f} "
               f"(p Holm {r['p_holm_other']:.3g}) in {r['other_run']}" for r in held.filter(~pl.col("holds")).iter_rows(named=True)]
    return replace(study, drift=pl.concat(moved) if moved else study.drift, verdicts=held,
                   notes=changed + study.notes)


def _repeated_pairs(runs: list[Run]) -> dict[str, list[tuple[str, str]]]:
    """Each pair name that several runs hold: [(run, the pair's label in the comparison)], first run first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for run in runs:
        for name in run.manifest.get("pairs", {}):
            found.setdefault(name, []).append((run.name, f"{run.name}:{name}"))
    return {name: where for name, where in found.items() if len(where) > 1}


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or as many trailing path parts as it takes to tell them apart."""
    resolved = [p.resolve() for p in run_dirs]
    if len(set(resolved)) < len(resolved):
        raise EdgeevalError("the same run directory is given twice")
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in resolved]


def _cross_run_pairs(runs: list[Run], matches: dict[str, str]) -> list[ArmPair]:
    first, pairs = runs[0], []
    for name in matches:
        if name not in first.manifest.get("models", {}):
            raise EdgeevalError(f"--match {name}=...: the first run ({first.name}) has no model '{name}' "
                                f"(models: {', '.join(first.manifest.get('models', {})) or 'none'})")
    for run in runs[1:]:
        for model in _model_order(first.manifest):
            other = _same_model(first.manifest["models"][model], model, run, matches)
            if other is not None:
                shown = model if other == model else f"{model} → {other}"
                pairs.append(ArmPair(f"{shown}: {first.name} vs {run.name}", f"{first.name}:{model}", f"{run.name}:{other}"))
    return pairs


def _same_model(meta: dict, model: str, run: Run, matches: dict[str, str]) -> str | None:
    """The model of `run` that is `model` of the first run: named by --match, the same entry name, or the one model
    with the same `reference`."""
    models = run.manifest.get("models", {})
    if model in matches:
        return matches[model] if matches[model] in models else None
    if model in models:
        return model
    same = [name for name, other in models.items() if meta.get("reference") and other.get("reference") == meta["reference"]]
    return same[0] if len(same) == 1 else None


def _model_order(manifest: dict) -> list[str]:
    """The models of a run, those of its pairs first (baseline, candidate), then the rest."""
    paired = [m for p in manifest.get("pairs", {}).values() for m in (p["baseline"], p["candidate"])]
    return list(dict.fromkeys(paired + list(manifest.get("models", {}))))


def _within_run_pairs(runs: list[Run]) -> list[ArmPair]:
    return [ArmPair(f"{run.name}:{name}", f"{run.name}:{p['baseline']}", f"{run.name}:{p['candidate']}")
            for run in runs for name, p in run.manifest.get("pairs", {}).items()]


def _task_drift(runs: list[Run]) -> list[str]:
    """Warn when a task's prompt or data differ between runs: then a difference is not the model's alone."""
    notes = []
    tasks = {t for run in runs for t in run.manifest.get("tasks", {})}
    for task in sorted(tasks):
        hashes = {run.name: run.manifest["tasks"][task].get("hash") for run in runs if task in run.manifest.get("tasks", {})}
        if len(set(hashes.values())) > 1:
            listed = ", ".join(f"{name} {h}" for name, h in hashes.items())
            notes.append(f"task {task}: the prompt, data or settings differ between runs (task hash {listed}); "
                         "differences across runs are not the model's alone")
    return notes


def _assemble(title, runs, arms, pairs, tasks, scored, seed, notes) -> Study:
    present = set(scored["model"].unique().to_list()) if scored.height else set()
    pairs = [p for p in pairs if {p.baseline, p.candidate} <= present]
    # Baselines before candidates, in pair order, so every table and chart reads left to right.
    order = [a for p in pairs for a in (p.baseline, p.candidate)] + list(arms)
    arms = {label: arms[label] for label in dict.fromkeys(order) if label in arms}
    results = summarize(scored, seed=seed) if scored.height else pl.DataFrame(schema=SUMMARY_SCHEMA)
    results = with_versions(results, scored)
    comparisons = [compare_pair(scored, p.name, p.baseline, p.candidate, seed=seed) for p in pairs]
    comparison = pl.concat(comparisons) if comparisons else pl.DataFrame(schema=COMPARISON_SCHEMA)
    notes = notes + version_drift(runs) + [f"{note} ({run.name})" for run in runs for note in shard_gaps(run.path)]
    notes += not_computed_notes(results, scored, runs)
    spread = repetition_spread(scored) if scored.height else pl.DataFrame(schema=REPETITION_SCHEMA)
    return Study(title, runs, arms, pairs, tasks, scored, results, comparison, True, notes, spread,
                 robustness(scored, seed=seed))


def not_computed_notes(results: pl.DataFrame, scored: pl.DataFrame, runs: list[Run]) -> list[str]:
    """One note per metric a task lists but the run could not compute (n = 0), saying why: the run's own reason
    (its manifest's scoring entry) where it has one, else the metric's."""
    missing = results.filter((pl.col("n") == 0) & pl.col("value").is_nan())
    if not missing.height:
        return []
    task_kind = dict(scored.select("task", "kind").unique().iter_rows()) if "kind" in scored.columns else {}
    reasons = {name: status.get("reason") for run in runs
               for name, status in (run.manifest.get("scoring") or {}).items() if not status.get("computed")}
    notes: dict[str, list[str]] = {}
    for metric, task in missing.select("metric", "task").unique(maintain_order=True).iter_rows():
        declared = kinds.metric(task_kind.get(task) or kinds.DEFAULT, metric)
        reason = reasons.get(metric.split("_")[0]) or declared.not_computed or "its scores are missing"
        notes.setdefault(f"{metric} not computed: {reason}", []).append(task)
    return [f"{note} ({', '.join(tasks)})" for note, tasks in notes.items()]


def with_versions(results: pl.DataFrame, scored: pl.DataFrame) -> pl.DataFrame:
    """The results with the parser and scorer versions (of the task's kind) that computed each row."""
    task_kind = dict(scored.select("task", "kind").unique().iter_rows()) if "kind" in scored.columns else {}
    versions = [kinds.get(task_kind.get(task) or kinds.DEFAULT).version for task in results["task"].to_list()]
    return results.with_columns(
        parser_version=pl.Series([v["parser_version"] for v in versions], dtype=pl.String),
        scorer_version=pl.Series([v["scorer_version"] for v in versions], dtype=pl.String),
    )


def version_drift(runs: list[Run]) -> list[str]:
    """A note for each task whose answers were recorded under another parser or scorer version than the one
    scoring them now: re-scoring an old run may then give other figures than its first report."""
    notes = []
    for run in runs:
        for task, meta in run.manifest.get("tasks", {}).items():
            current = kinds.get(meta.get("kind") or kinds.DEFAULT).version
            changed = [f"{part.split('_')[0]} {meta[part]} → {current[part]}" for part in current
                       if meta.get(part) is not None and meta[part] != current[part]]
            if changed:
                notes.append(f"task {task} ({run.name}): recorded under another version than it is scored with now "
                             f"({', '.join(changed)}); figures may differ from the run's first report")
    return notes


def without_text(study: Study) -> Study:
    """The same study with no prompt or answer text in it: for figures shared outside the hospital."""
    # Keep only string columns known to hold no free text: a new text column stays out until named here.
    unknown = [c for c, dtype in study.scored.schema.items() if dtype == pl.String and c not in SAFE_STRING_COLUMNS]
    scored = study.scored.drop([c for c in TEXT_COLUMNS if c in study.scored.columns] + unknown, strict=False)
    labels = pl.col("kind").is_in(list(LABEL_KINDS)) if "kind" in scored.columns else pl.lit(True)
    redactions = [pl.when(labels).then(pl.col(c).map_elements(redact_label, return_dtype=pl.String))
                  .otherwise(pl.when(pl.col(c).is_not_null()).then(pl.lit(WITHHELD))).alias(c)
                  for c in ("gold", "parsed") if c in scored.columns]
    if "error" in scored.columns:
        # The message may quote the input; its kind (the record's error_kind) does not.
        redactions.append(pl.col("error_kind").cast(pl.String).alias("error"))
    return replace(study, scored=scored.with_columns(redactions) if redactions else scored, has_text=False)


def redact_label(value: str | None) -> str | None:
    if value is None:
        return None
    short = len(value) <= LABEL_MAX_CHARS and value.count(" ") <= LABEL_MAX_SPACES and "\n" not in value
    return value if short else WITHHELD
