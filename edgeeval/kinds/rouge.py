"""ROUGE-1/2/L F-measures from Google's rouge-score package (what Hugging Face evaluate, and so CLUE, uses)."""

from __future__ import annotations

from functools import cache

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_f(reference: str, prediction: str, stemmer: bool = False) -> dict[str, float]:
    """{'rouge1': F, 'rouge2': F, 'rougeL': F} of `prediction` against `reference`; 0 for empty text."""
    scores = _scorer(stemmer).score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


@cache
def _scorer(stemmer: bool):
    # rouge-score imports nltk only for its Porter stemmer, which is code, not a data download.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
