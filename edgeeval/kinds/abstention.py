"""Abstention: the documents cannot answer the question, so the right reply says so (LongHealth task 3);
gold is the letter of the 'cannot be answered' option, and any other answer is a hallucination."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from edgeeval.kinds.base import COMMON, Kind, Metric, Ratio, correct_expr, errored_expr, invalid_expr, number
from edgeeval.kinds.multiple_choice import option_continuations
from edgeeval.kinds.parsing import parse_abstention


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return parse_abstention(reply, options, gold)


def score(records: pl.DataFrame) -> pl.DataFrame:
    """Choosing the 'cannot be answered' option (or saying so) is abstaining; any other reply that is not
    an engine error answers a question the documents cannot answer."""
    abstained = correct_expr()
    return records.with_columns(
        abstained=abstained, correct=abstained, invalid=invalid_expr(), errored=errored_expr(),
        hallucinated=(~abstained & pl.col("error").is_null()).cast(pl.Float64),
        hallucination_units=pl.lit(1.0),
    )


KIND = Kind(
    name="abstention",
    description="saying the documents do not answer the question",
    metrics=(
        Metric("abstention_rate", "replies that say the documents do not answer", ratio=Ratio(number("abstained")),
               test="mcnemar_exact"),
        Metric("hallucination_rate", "replies that answer a question the documents cannot answer",
               ratio=Ratio(number("hallucinated"), number("hallucination_units")), lower_is_better=True,
               test="mcnemar_exact"),
        *COMMON,
    ),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    loglik_options=option_continuations,
    lettered=True,
)
