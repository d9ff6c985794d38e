"""What a task kind declares: how a reply is parsed, how each example is scored, which metrics it reports,
which way each metric is better and how two models are compared on it, and what loglik mode scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

PairedTest = Literal["mcnemar_exact", "paired_permutation"]


@dataclass(frozen=True)
class Ratio:
    """A metric worth sum(numerator) / sum(denominator) over the examples: a mean when the denominator
    is 1 (accuracy, ROUGE), a micro-average otherwise. Nothing in the denominator makes it 0."""

    numerator: pl.Expr
    denominator: pl.Expr = pl.lit(1.0)


@dataclass(frozen=True)
class Metric:
    """One reported number of a kind."""

    name: str
    description: str
    form: Literal["ratio", "macro_f1", "table"] = "ratio"
    """'ratio': `ratio` over the examples; 'macro_f1': macro-F1 of parsed vs gold; 'table': a per-answer
    breakdown (the confusion table), described but never compared between models."""
    ratio: Ratio | None = None
    lower_is_better: bool = False
    """Failure measures (invalid answers, engine errors, hallucinations): fewer is better."""
    requires: str | None = None
    """A per-example column that only some runs have (a score computed with a model of its own): where it is
    missing the metric is reported as not computed, with `not_computed`, never as 0."""
    not_computed: str = ""
    """Why the metric is missing when `requires` is (the run's manifest may say more)."""
    test: PairedTest | None = "paired_permutation"
    """How the paired difference gets its p-value: an exact McNemar test on per-example yes/no flags (it falls
    back to the permutation test if the flags turn out not to be 0/1 of weight 1), a paired sign-flip
    permutation test, or None: not compared (engine errors reflect the machine, not the model)."""


ParseReply = Callable[[str, Mapping[str, str], Sequence[str], str], "str | None"]
"""(reply, options {letter: text}, labels, gold) -> the answer in the form gold has, or None."""
LoglikScoring = Literal["letter", "full_text"]
"""What loglik mode scores after the prompt: the options' letters, or their texts (labels: each label)."""
LoglikOptions = Callable[[LoglikScoring, Sequence[str], Mapping[str, str]], tuple[tuple[str, str], ...]]
"""(the task's loglik scoring, its labels, the example's options {letter: text}) -> (answer key as gold has
it, text scored after the prompt) per option; ValueError when the example has nothing to score."""


@dataclass(frozen=True)
class Kind:
    """A kind of task: everything the config, runner, scoring and report need to know about it."""

    name: str
    description: str
    metrics: tuple[Metric, ...]
    parse: ParseReply
    """A generated reply to an answer (loglik records need no parser: the best-scored option is the answer):
    edgeeval's lenient reading (many phrasings, option texts)."""
    score: Callable[[pl.DataFrame], pl.DataFrame]
    """Adds the per-example columns the metrics read (correct, invalid, errored, rouge1, code_tp, ...)."""
    parser_version: str
    """Bumped whenever `parse` reads some reply differently; stamped into the manifest and the results."""
    scorer_version: str
    """Bumped whenever `score` or a metric computes some example differently."""
    loglik_options: LoglikOptions | None = None
    """What `--mode loglik` scores; None: the kind's answers are free text and must be generated."""
    lettered: bool = False
    """Its examples have lettered options, so loglik can score the letters alone."""
    uses_labels: bool = False
    """Its task TOML lists the allowed answers in `labels` (at least two)."""
    copies_input: bool = False
    """Its answers copy phrases of the prompt (summaries): generation drafts them by prompt lookup by default."""
    short_answers: bool = True
    """Gold and parsed answers are letters, labels or codes (no free text): `--no-text` reports may show them."""
    unoffered_choice: Callable[[str, Sequence[str]], "str | None"] | None = None
    """For lettered kinds: the letter of an option that was not offered, when the reply picks one."""
    clue_parse: ParseReply | None = None
    """CLUE's own rule for reading a reply (the study's protocol, CLUE at commit ff75877): a task with
    `answer_rule = "clue"` scores `accuracy` with it and keeps `parse` as `accuracy_lenient`."""
    reads_reply_prefix: bool = True
    """Whether the parser reads the task's `reply_prefix` before the generated text (an option letter may follow
    the cue). A summary is scored as generated, without the cue, as CLUE scores it."""
    code_table: str | None = None
    """The code table answers are checked against (ICD coding: which ICD-10-CM table), named in the manifest."""

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"kind '{self.name}' has no metric '{name}'")

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(metric.name for metric in self.metrics)

    @property
    def version(self) -> dict[str, str]:
        return {"parser_version": self.parser_version, "scorer_version": self.scorer_version}


# --- per-example columns every kind shares ---------------------------------------------------------------


def number(name: str) -> pl.Expr:
    """A per-example column as a float, a missing value counting 0."""
    return pl.col(name).cast(pl.Float64).fill_null(0.0)


def errored_expr() -> pl.Expr:
    """The engine failed on this item (no answer text at all)."""
    return pl.col("error").is_not_null()


def invalid_expr() -> pl.Expr:
    """The engine answered but the parser could not read an answer from it."""
    return pl.col("parsed").is_null() & pl.col("error").is_null()


def correct_expr(parsed: str = "parsed") -> pl.Expr:
    """Parsed answer equals gold; a null on either side or an engine error counts as wrong."""
    same = pl.col(parsed).cast(pl.String) == pl.col("gold").cast(pl.String)
    return (same & pl.col("error").is_null()).fill_null(False)


def answered(records: pl.DataFrame, **columns: pl.Expr | pl.Series) -> pl.DataFrame:
    """`records` with the shared columns (correct, correct_lenient, invalid, errored) and the kind's own.
    `correct_lenient` reads `parsed_lenient` (the lenient parser's answer) where the task's rule is CLUE's."""
    return records.with_columns(correct=correct_expr(), correct_lenient=correct_expr(lenient_column(records)),
                                invalid=invalid_expr(), errored=errored_expr(), **columns)


def lenient_column(records: pl.DataFrame) -> str:
    """Where the lenient parser's answer is: `parsed_lenient` when scoring kept both, else `parsed` itself."""
    return "parsed_lenient" if "parsed_lenient" in records.columns else "parsed"


def safe_ratio(num: float, den: float) -> float:
    """num / den, or 0 when there is nothing in the denominator (CLUE scores an empty prediction so)."""
    return num / den if den else 0.0


def f1(tp: int, predicted: int, gold: int) -> float:
    return safe_ratio(2 * tp, predicted + gold)


# Errors (engine crash, prompt too long) count against every quality metric like a wrong answer, are
# reported on their own as error_rate, and are never hallucinations.
INVALID_RATE = Metric("invalid_rate", "replies from which no answer could be read", ratio=Ratio(number("invalid")),
                      lower_is_better=True, test="mcnemar_exact")
ERROR_RATE = Metric("error_rate", "examples the engine could not answer (crash, prompt too long)",
                    ratio=Ratio(number("errored")), lower_is_better=True, test=None)
ACCURACY = Metric("accuracy", "answers equal to gold, read by the task's rule (CLUE's for the study's tasks)",
                  ratio=Ratio(number("correct")), test="mcnemar_exact")
ACCURACY_LENIENT = Metric("accuracy_lenient", "answers equal to gold as edgeeval's lenient parser reads them (many "
                          "phrasings, option texts): beside `accuracy`, what following the format costs a model",
                          ratio=Ratio(number("correct_lenient")), test="mcnemar_exact")
CONFUSION = Metric("confusion", "for each gold answer, the share of each answer given", form="table", test=None)


def hallucination_rate(description: str, test: PairedTest) -> Metric:
    """Hallucinations per unit (an answer, or a generated code), from the columns `hallucinated` and
    `hallucination_units` that the kind's scorer adds; fewer is better."""
    return Metric("hallucination_rate", description, ratio=Ratio(number("hallucinated"), number("hallucination_units")),
                  lower_is_better=True, test=test)
COMMON = (INVALID_RATE, ERROR_RATE)


# --- loglik answers ----------------------------------------------------------------------------------

def best_option(scores: Mapping[str, Mapping], normalization: str) -> str:
    """The option a loglik record answers: the highest 'mean_logprob' (normalization 'mean') or 'logprob'
    ('sum'); a tie goes to the first option in order, so the answer never depends on dict hashing."""
    field = "mean_logprob" if normalization == "mean" else "logprob"
    best_key, best_value = None, None
    for key, score in scores.items():
        value = score[field]
        if best_value is None or value > best_value:
            best_key, best_value = key, value
    if best_key is None:
        raise ValueError("no options to choose from")
    return best_key
