"""The published study's scores (benchmarks/clinical/reference/*.csv, in percent as published): what a report sets
beside a run's own numbers for the models that name their published counterpart."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from edgeeval.errors import DataError
from edgeeval.files import read_text

COLUMNS = ("model", "task", "metric", "value")


@dataclass(frozen=True)
class PublishedScore:
    model: str
    """The model's name as published (what a models.toml entry's `reference` names)."""
    task: str
    """The task's name as published (what a task TOML's [published] section names)."""
    metric: str
    percent: float
    source: str
    """The file the score comes from."""

    @property
    def value(self) -> float:
        """As edgeeval reports it: a share from 0 to 1."""
        return self.percent / 100.0


@cache
def load_published(folder: Path) -> tuple[PublishedScore, ...]:
    """Every published score in the folder's CSV files (model, task, metric, value in percent)."""
    scores = []
    for path in sorted(folder.glob("*.csv")):
        reader = csv.DictReader(io.StringIO(read_text(path, DataError, "published scores")))
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"{path}: columns {reader.fieldnames}, expected {', '.join(COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                percent = float(row["value"])
            except (TypeError, ValueError):
                percent = math.nan
            if not math.isfinite(percent) or not all(row[c] for c in COLUMNS[:3]):
                raise DataError(f"{path}:{line}: a row needs a model, task, metric and a number (got {row})")
            scores.append(PublishedScore(row["model"], row["task"], row["metric"], percent, path.name))
    return tuple(scores)


def published_models(folder: Path) -> list[str]:
    return sorted({score.model for score in load_published(folder)})


def published_value(folder: Path, model: str, task: str, metric: str) -> PublishedScore | None:
    return next((s for s in load_published(folder) if (s.model, s.task, s.metric) == (model, task, metric)), None)
