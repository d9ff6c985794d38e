"""Summary: free text scored against a reference with ROUGE, and problem lists with a set F1 (MeQSum,
problem summaries, MeDiSumQA)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache

import polars as pl

from edgeeval.kinds.base import COMMON, Kind, Metric, Ratio, errored_expr, f1, number

# ROUGE-1/2/L F-measures from Google's rouge-score package (what Hugging Face evaluate, and so CLUE, uses).
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


# The problem lists of BioNLP 2023 task 1A.
_LIST_MARKER = re.compile(r"^\s*(?:[-*•#]+|\(?\d{1,2}[.)])\s*")


def parse_problem_list(text: str) -> list[str]:
    """The problems a reply lists: split on ';' and line breaks, list markers ('-', '1.', '#') removed."""
    if not isinstance(text, str):
        return []
    pieces = re.split(r"[;\n]", text)
    return [p for p in (_LIST_MARKER.sub("", piece).strip() for piece in pieces) if p]


def normalize_problem(problem: str) -> str:
    """The matching key of a problem: case-folded, punctuation as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", problem.casefold()).split())


SCORE_COLUMNS = (*ROUGE_TYPES, "problem_f1")


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return reply.strip() or None


def score(records: pl.DataFrame) -> pl.DataFrame:
    stemmer = records["rouge_stemmer"].fill_null(False).to_list() if "rouge_stemmer" in records.columns \
        else [False] * records.height
    rows = zip(records["gold"].to_list(), records["parsed"].to_list(), records["error"].to_list(), stemmer)
    scores = [summary_scores(gold, text if error is None else None, stem) for gold, text, error, stem in rows]
    columns = {name: pl.Series(name, [s[name] for s in scores], dtype=pl.Float64) for name in SCORE_COLUMNS}
    empty = pl.col("parsed").cast(pl.String).fill_null("").str.strip_chars() == ""
    return records.with_columns(errored=errored_expr(), invalid=empty & pl.col("error").is_null(), **columns)


def summary_scores(gold: str, text: str | None, stemmer: bool) -> dict[str, float]:
    if not text:
        return {name: 0.0 for name in SCORE_COLUMNS}
    scores = {name: float(value) for name, value in rouge_f(gold, text, stemmer).items()}
    return {**scores, "problem_f1": problem_f1(gold, text)}


def problem_f1(gold: str, text: str) -> float:
    """F1 of the set of problems a reply lists against the gold ';'-separated list: problems match when
    equal after case-folding and turning punctuation into spaces (normalize_problem)."""
    truth = {normalize_problem(p) for p in gold.split(";")} - {""}
    found = {normalize_problem(p) for p in parse_problem_list(text)} - {""}
    return f1(len(truth & found), len(found), len(truth))


KIND = Kind(
    name="summary",
    description="free text against a reference",
    metrics=(
        *(Metric(name, f"{name.upper()} F-measure against the reference", ratio=Ratio(number(name)))
          for name in ROUGE_TYPES),
        Metric("problem_f1", "F1 of the listed problems against the gold problem list",
               ratio=Ratio(number("problem_f1"))),
        *(Metric(f"bertscore_{part}", f"BERTScore {part} against the reference, from an encoder's last layer through "
                 "llama.cpp (CLUE used SciBERT's or Bio_ClinicalBERT's through bert-score: compare within a run)",
                 ratio=Ratio(number(f"bertscore_{part}")), requires=f"bertscore_{part}",
                 not_computed="no BERTScore encoder was named in models.toml ([scoring] bertscore_model)")
          for part in ("precision", "recall", "f1")),
        Metric("umls_f1", "F1 of the reply's UMLS concepts against the reference's (CLUE's UMLS-F1)",
               ratio=Ratio(number("umls_f1")), requires="umls_f1",
               not_computed="UMLS-F1 needs the UMLS licence and scispaCy's UMLS linker with its knowledge base, which "
               "edgeeval does not ship"),
        *COMMON,
    ),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    short_answers=False,
    copies_input=True,
    reads_reply_prefix=False,
)
