"""Multiple choice: the reply names one of the lettered options; an option that was not offered is a hallucination."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import polars as pl

from edgeeval.errors import DataError
from edgeeval.kinds.base import ACCURACY, COMMON, CONFUSION, FLAG_HALLUCINATION, Kind, answered, errored_expr
from edgeeval.kinds.parsing import parse_choice, parse_unoffered_choice

if TYPE_CHECKING:
    from edgeeval.config.models import TaskSpec
    from edgeeval.data.example import Example


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return parse_choice(reply, list(options), options)


def score(records: pl.DataFrame) -> pl.DataFrame:
    unoffered = pl.col("unoffered_choice") if "unoffered_choice" in records.columns else pl.lit(None)
    return answered(records, hallucinated=(unoffered.is_not_null() & ~errored_expr()).cast(pl.Float64),
                    hallucination_units=pl.lit(1.0))


def option_continuations(spec: TaskSpec, example: Example) -> tuple[tuple[str, str], ...]:
    """The option letters (loglik scoring 'letter') or the options' texts ('full_text'), keyed by letter."""
    options = example.fields.get("options") or {}
    if not options:
        raise DataError(f"{example.source}: example {example.id} has no options to score")
    if spec.loglik is not None and spec.loglik.scoring == "letter":
        return tuple((letter, letter) for letter in options)
    return tuple((letter, str(text)) for letter, text in options.items())


KIND = Kind(
    name="multiple_choice",
    description="an option letter",
    metrics=(ACCURACY, FLAG_HALLUCINATION, CONFUSION, *COMMON),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    loglik_options=option_continuations,
    lettered=True,
    unoffered_choice=parse_unoffered_choice,
)
