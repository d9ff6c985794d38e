"""Label: the reply is one word of the task's `labels` (MedNLI's entailment/neutral/contradiction, PubMedQA's yes/no/maybe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import polars as pl

from edgeeval.kinds.base import ACCURACY, COMMON, CONFUSION, Kind, Metric, answered
from edgeeval.kinds.parsing import parse_label

if TYPE_CHECKING:
    from edgeeval.config.models import TaskSpec
    from edgeeval.data.example import Example


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return parse_label(reply, labels)


def score(records: pl.DataFrame) -> pl.DataFrame:
    return answered(records)


def label_continuations(spec: TaskSpec, example: Example) -> tuple[tuple[str, str], ...]:
    """Every label, scored as the reply."""
    return tuple((label, label) for label in spec.labels)


MACRO_F1 = Metric("macro_f1", "F1 averaged over the labels that occur (scikit-learn's macro average)",
                  form="macro_f1")

KIND = Kind(
    name="label",
    description="one word of the task's labels",
    metrics=(ACCURACY, MACRO_F1, CONFUSION, *COMMON),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    loglik_options=label_continuations,
    uses_labels=True,
)
