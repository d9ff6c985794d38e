"""Abstention: the documents cannot answer the question, so the right reply says so (LongHealth task 3);
gold is the letter of the 'cannot be answered' option, and any other answer is a hallucination."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import polars as pl

from edgeeval.kinds.base import (COMMON, Kind, Metric, Ratio, correct_expr, errored_expr, hallucination_rate,
                                 invalid_expr, lenient_column, number)
from edgeeval.kinds.multiple_choice import option_continuations, parse_choice, parse_clue


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return parse_abstention(reply, options, gold)


# Ways of saying the documents do not hold the answer. Checked only when the reply names no option, so
# "The answer is B; the dose is not mentioned elsewhere" still counts as choosing B.
_ABSTAIN = re.compile(
    r"\b(?:"
    r"(?:can ?not|can't|could not|couldn't|unable to) (?:be )?(?:answer(?:ed)?|determined?|tell|find|found)"
    r"|(?:is|are|was|were) not (?:mentioned|stated|documented|provided|given|available|found|reported|specified)"
    r"|(?:does|do|did) not (?:contain|mention|provide|include|state|specify|say)"
    r"|no (?:information|mention|data|documentation|record)"
    r"|not enough information|insufficient information|unanswerable"
    r")\b",
    re.IGNORECASE,
)


def parse_abstention(text: str, options: Mapping[str, str], abstain_letter: str) -> str | None:
    """The option letter the reply commits to; else `abstain_letter` if it says the documents do not
    answer the question; else None."""
    if not isinstance(text, str):
        return None
    letter = parse_choice(text, list(options), options)
    if letter is not None:
        return letter
    flat = re.sub(r"\s+", " ", text)
    return abstain_letter if _ABSTAIN.search(flat) else None


def score(records: pl.DataFrame) -> pl.DataFrame:
    """Choosing the 'cannot be answered' option (or saying so) is abstaining; any other reply that is not
    an engine error answers a question the documents cannot answer."""
    abstained = correct_expr()
    return records.with_columns(
        abstained=abstained, correct=abstained, invalid=invalid_expr(), errored=errored_expr(),
        abstained_lenient=correct_expr(lenient_column(records)),
        hallucinated=(~abstained & pl.col("error").is_null()).cast(pl.Float64),
        hallucination_units=pl.lit(1.0),
    )


KIND = Kind(
    name="abstention",
    description="saying the documents do not answer the question",
    metrics=(
        Metric("abstention_rate", "replies that say the documents do not answer, read by the task's rule (CLUE's: "
               "only the 'cannot be answered' option's letter, stated as 'The correct answer is F:')",
               ratio=Ratio(number("abstained")), test="mcnemar_exact"),
        Metric("abstention_rate_lenient", "the same, as edgeeval's lenient parser reads replies (any phrasing of the "
               "option, or saying the documents do not answer)", ratio=Ratio(number("abstained_lenient")),
               test="mcnemar_exact"),
        hallucination_rate("replies that answer a question the documents cannot answer", "mcnemar_exact"),
        *COMMON,
    ),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    loglik_options=option_continuations,
    lettered=True,
    clue_parse=parse_clue,
)
