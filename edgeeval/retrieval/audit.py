"""A record's retrieval audit as flat columns for scoring and the report."""

from __future__ import annotations

import polars as pl

COLUMNS = {"passages": pl.String, "top_source": pl.String, "n_passages": pl.Int64, "n_passage_tokens": pl.Int64,
           "leak": pl.Boolean, "leak_excluded": pl.Int64}
"""`passages` ('id (score); ...', best first) and `top_source` name corpus files: --no-text leaves them out."""


def audit_columns(retrieval: dict | None) -> dict:
    """The columns of one record: all None for a model without retrieval."""
    if not retrieval:
        return dict.fromkeys(COLUMNS)
    shown = retrieval.get("passages") or []
    return {
        "passages": "; ".join(f"{p['id']} ({p['score']:.2f})" for p in shown),
        "top_source": shown[0]["source"] if shown else None,
        "n_passages": len(shown),
        "n_passage_tokens": retrieval.get("n_passage_tokens"),
        "leak": bool(retrieval.get("leaked")),
        "leak_excluded": retrieval.get("excluded", 0),
    }
