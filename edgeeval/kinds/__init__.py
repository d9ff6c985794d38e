"""The task kinds: each is declared in one module of this package and registered here by name."""

from __future__ import annotations

from edgeeval.kinds import abstention, icd_coding, label, multiple_choice, summary
from edgeeval.kinds.base import Kind, Metric, PairedTest, Ratio

__all__ = ["KINDS", "Kind", "Metric", "PairedTest", "Ratio", "get", "lower_is_better", "metric"]

KINDS: dict[str, Kind] = {k.name: k for k in (multiple_choice.KIND, label.KIND, summary.KIND, icd_coding.KIND,
                                               abstention.KIND)}
DEFAULT = "multiple_choice"
"""The kind of records that carry none (scoring frames built by hand)."""


def get(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown task kind '{name}' (kinds: {', '.join(KINDS)})") from None


def metric(kind: str, name: str) -> Metric:
    return get(kind).metric(name)


def _directions() -> dict[str, bool]:
    """Which way each metric name is better; a name means the same direction in every kind that has it."""
    seen: dict[str, bool] = {}
    for kind in KINDS.values():
        for m in kind.metrics:
            if seen.setdefault(m.name, m.lower_is_better) != m.lower_is_better:
                raise AssertionError(f"metric '{m.name}' is better lower in one kind and higher in another")
    return seen


_LOWER_IS_BETTER = _directions()


def lower_is_better(name: str) -> bool:
    """Failure measures (invalid answers, errors, hallucinations) are better lower. Rows of a per-answer
    table (confusion_<gold>_as_<answer>) and metric names no kind declares are read higher-is-better."""
    return _LOWER_IS_BETTER.get(name, False)
