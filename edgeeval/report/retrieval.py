"""The report's retrieval section: per retrieval arm and task, how much was read, from where, and which
test items were found in the corpus (the leakage guard)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from edgeeval.report.study import Study

TOP_SOURCES = 5


@dataclass(frozen=True)
class RetrievalRow:
    arm: str
    task: str
    items: int
    mean_passages: float
    mean_passage_tokens: float | None
    leaks: int
    excluded: int
    top_sources: list[tuple[str, float]]
    """(corpus file, share of items whose best passage came from it), most frequent first; empty under --no-text."""

    @property
    def leak_note(self) -> str:
        note = f"{self.leaks} of {self.items} items appear in the corpus"
        return note + (f" ({self.excluded} such passages left out)" if self.excluded else "")


def retrieval_rows(study: Study) -> list[RetrievalRow]:
    scored = study.scored
    if not scored.height or "n_passages" not in scored.columns:
        return []
    rows = []
    frame = scored.filter(pl.col("n_passages").is_not_null())
    # float(...mean()): polars types a Series' mean as any Python literal, hence the two ignores.
    for (arm, task), part in frame.group_by(["model", "task"], maintain_order=True):
        tokens = part["n_passage_tokens"].drop_nulls()
        rows.append(RetrievalRow(
            arm=arm, task=task, items=part.height, mean_passages=float(part["n_passages"].mean()),  # type: ignore[arg-type]
            mean_passage_tokens=float(tokens.mean()) if tokens.len() else None,  # type: ignore[arg-type]
            leaks=int(part["leak"].fill_null(False).sum()), excluded=int(part["leak_excluded"].fill_null(0).sum()),
            top_sources=_top_sources(part)))
    return rows


def _top_sources(part: pl.DataFrame) -> list[tuple[str, float]]:
    if "top_source" not in part.columns:
        return []
    counts = part["top_source"].drop_nulls().value_counts(sort=True).head(TOP_SOURCES)
    return [(source, count / part.height) for source, count in counts.iter_rows()]


def sources_text(row: RetrievalRow) -> str:
    if not row.top_sources:
        return "–"
    return ", ".join(f"{source} {share:.0%}" for source, share in row.top_sources)


INTRO = ("Per retrieval arm and task: passages shown per item, their estimated tokens, the corpus files the best "
         "passage came from most often, and the leakage guard: items whose own question text is in the corpus "
         "(a near-duplicate passage among the best-scored candidates).")
