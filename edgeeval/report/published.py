"""The report's "Against the published study" section: for each model that names its published counterpart
(models.toml `reference`) and each task that says which published task it is (its [published] section), the
published value beside this run's with its CI; and for each pair, whether the published difference points the
same way as this run's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgeeval.config.locations import PUBLISHED_DIR
from edgeeval.data.published import published_value
from edgeeval.report.study import Study

INTRO = ("Published: the study's own runs (CLUE at commit ff75877, and the paper's abstract for the case challenges): "
         "full-precision weights on GPUs, greedy decoding. This run: its own quantization and hardware, and the "
         "departures from CLUE listed in benchmarks/clinical/README.md. Published percents are shown as shares. A "
         "published value outside this run's 95% CI is a difference to explain, not by itself an error.")


@dataclass(frozen=True)
class PublishedRow:
    """One model's value on one task and metric, published and here."""

    task: str
    metric: str
    arm: str
    reference: str
    published: float
    value: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def inside(self) -> bool | None:
        """Whether the published value lies inside this run's CI (None: no CI here)."""
        if self.ci_low is None or self.ci_high is None or math.isnan(self.ci_low) or math.isnan(self.ci_high):
            return None
        return self.ci_low <= self.published <= self.ci_high


@dataclass(frozen=True)
class DirectionRow:
    """One pair's difference (candidate - baseline) on one task and metric, published and here."""

    pair: str
    task: str
    metric: str
    published_delta: float
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_holm: float | None

    @property
    def agrees(self) -> bool | None:
        """Whether this run's difference points the way the published one does (None: no difference here or
        there)."""
        if self.delta is None or math.isnan(self.delta) or self.delta == 0 or self.published_delta == 0:
            return None
        return (self.delta > 0) == (self.published_delta > 0)


def published_rows(study: Study, folder: Path = PUBLISHED_DIR) -> list[PublishedRow]:
    values = {(r["model"], r["task"], r["metric"]): r for r in study.results.iter_rows(named=True)}
    rows = []
    for task, meta, metric, published_metric in _published_metrics(study):
        for arm, reference in _references(study).items():
            score = published_value(folder, reference, meta["task"], published_metric)
            if score is None:
                continue
            here = values.get((arm, task, metric), {})
            rows.append(PublishedRow(task, metric, arm, reference, score.value, here.get("value"),
                                     here.get("ci_low"), here.get("ci_high")))
    return rows


def direction_rows(study: Study, folder: Path = PUBLISHED_DIR) -> list[DirectionRow]:
    references = _references(study)
    compared = {(r["pair"], r["task"], r["metric"]): r for r in study.comparison.iter_rows(named=True)}
    rows = []
    for pair in study.pairs:
        if pair.baseline not in references or pair.candidate not in references:
            continue
        for task, meta, metric, published_metric in _published_metrics(study):
            base = published_value(folder, references[pair.baseline], meta["task"], published_metric)
            cand = published_value(folder, references[pair.candidate], meta["task"], published_metric)
            if base is None or cand is None:
                continue
            here = compared.get((pair.name, task, metric), {})
            rows.append(DirectionRow(pair.name, task, metric, cand.value - base.value, here.get("delta"),
                                     here.get("ci_low"), here.get("ci_high"), here.get("p_holm")))
    return rows


def direction_text(row: DirectionRow) -> str:
    if row.agrees is None:
        return "–"
    significant = row.p_holm is not None and not math.isnan(row.p_holm) and row.p_holm < 0.05
    way = "same direction" if row.agrees else "opposite direction"
    return f"{way}{'' if significant else ' (not significant here)'}"


def inside_text(row: PublishedRow) -> str:
    return {True: "yes", False: "no", None: "–"}[row.inside]


def no_rows_note(study: Study) -> str:
    """Why the section is empty: what the run would need to set published values beside its own."""
    if not _references(study):
        return ("No model of this run names its published counterpart: give a models.toml entry "
                "`reference = \"<the published name>\"` (benchmarks/clinical/reference/ lists them).")
    return "The published study has no value for these models on these tasks."


def _references(study: Study) -> dict[str, str]:
    return {label: arm.meta["reference"] for label, arm in study.arms.items() if arm.meta.get("reference")}


def _published_metrics(study: Study):
    """(run task, its [published] section, edgeeval metric, published metric) for the generation tasks that have
    one: the study generated its answers, so loglik runs (TASK@loglik) are not its counterparts."""
    for task, meta in study.tasks.items():
        published = meta.get("published")
        if not published or meta.get("mode", "generate") != "generate":
            continue
        for metric, published_metric in published.get("metrics", {}).items():
            yield task, published, metric, published_metric
