"""Label: the reply is one word of the task's `labels` (MedNLI's entailment/neutral/contradiction, PubMedQA's yes/no/maybe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from edgeeval.kinds.base import ACCURACY, ACCURACY_LENIENT, COMMON, CONFUSION, Kind, LoglikScoring, Metric, answered
from edgeeval.kinds.multiple_choice import contains_phrase


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return parse_label(reply, labels)


def score(records: pl.DataFrame) -> pl.DataFrame:
    return answered(records)


def label_continuations(scoring: LoglikScoring, labels: Sequence[str],
                        options: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Every label, scored as the reply."""
    return tuple((label, label) for label in labels)


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """Return the one label that appears as a whole word in `text`; None if none or several do."""
    if not isinstance(text, str):
        return None
    found: dict[str, str] = {}
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            continue
        if contains_phrase(text, label):
            found.setdefault(label.casefold(), label)
    return next(iter(found.values())) if len(found) == 1 else None


def parse_clue(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    """CLUE's MedNLI rule: the reply answers gold when gold's text occurs in it exactly once, upper-cased and as a
    substring (`re.findall(label.upper(), output.upper())`), whatever else it says: "entailment, not
    contradiction" is right. Otherwise the reply's answer is the one label that occurs exactly once (a wrong
    answer), and None (invalid) when no label does: "neutral ... neutral" is not an answer."""
    if not isinstance(reply, str):
        return None
    text = reply.upper()
    once = [label for label in labels if text.count(label.upper()) == 1]
    if gold in once:
        return gold
    return once[0] if len(once) == 1 else None


MACRO_F1 = Metric("macro_f1", "F1 averaged over the labels that occur (scikit-learn's macro average)",
                  form="macro_f1")

KIND = Kind(
    name="label",
    description="one word of the task's labels",
    metrics=(ACCURACY, ACCURACY_LENIENT, MACRO_F1, CONFUSION, *COMMON),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    loglik_options=label_continuations,
    uses_labels=True,
    clue_parse=parse_clue,
)
