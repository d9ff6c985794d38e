"""Multiple choice: the reply names one of the lettered options (the parser below reads the many ways a model
says so); an option that was not offered is a hallucination."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import polars as pl

from edgeeval.kinds.base import (ACCURACY, ACCURACY_LENIENT, COMMON, CONFUSION, Kind, LoglikScoring, answered,
                                 errored_expr, hallucination_rate)


def parse(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    return parse_choice(reply, list(options), options)


CLUE_ANSWER = re.compile(r"The correct answer is (\w):")
"""CLUE's LongHealth rule (eval_LongHealth.py, compute_metrics): the first 'The correct answer is X:', exactly so
written (case-sensitive, the colon right after the letter)."""


def parse_clue(reply: str, options: Mapping[str, str], labels: Sequence[str], gold: str) -> str | None:
    """The letter of CLUE's first 'The correct answer is X:'; None (invalid) without one. 'the correct answer is
    B:' or 'The correct answer is B.' are invalid here, as in CLUE, and read by the lenient parser."""
    if not isinstance(reply, str):
        return None
    found = CLUE_ANSWER.search(reply)
    return found.group(1) if found else None


def score(records: pl.DataFrame) -> pl.DataFrame:
    unoffered = pl.col("unoffered_choice") if "unoffered_choice" in records.columns else pl.lit(None)
    return answered(records, hallucinated=(unoffered.is_not_null() & ~errored_expr()).cast(pl.Float64),
                    hallucination_units=pl.lit(1.0))


def option_continuations(scoring: LoglikScoring, labels: Sequence[str],
                         options: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The option letters (loglik scoring 'letter') or the options' texts ('full_text'), keyed by letter."""
    if not options:
        raise ValueError("has no options to score")
    if scoring == "letter":
        return tuple((letter, letter) for letter in options)
    return tuple((letter, str(text)) for letter, text in options.items())


# --- the parser ----------------------------------------------------------------------------------------

# All patterns below run on whitespace-collapsed text and use only bounded quantifiers
# (or none at all), so each match attempt is constant work and a 100k-character reply
# is scanned in linear time: no nested or adjacent unbounded repeats.

_OPEN = r"(?P<open>\$?\\boxed\{|\\text\{|[(\[*_\"'`]{1,3})?"
_CLOSE = r"(?P<close>\}\$?|[)\]*_\"'`]{1,3})?"
# What may follow the letter: end, space or punctuation, never another word character
# (so "answer is Amiodarone" or "answer: B-cell" are not read as A or B).
_AFTER = r"(?=$|[\s.,:;!?)\]}*_\"'`])"
_MARKUP = r"(?:\*\*|__|\*|_)?"
_VERB = r"(?:is|was|would be|will be|should be|must be|=|:|-|–|—|->|=>)"
_ADVERB = r"(?:(?:clearly|definitely|most likely|likely|probably|therefore|thus) )?"
_PICK = r"(?:(?:option|choice|letter) )?"

# "answer is X", "final answer: X", "correct option is X", "**Answer:** (X)", "best choice: X".
# No plural "answers"/"options": "Answer choices: A) ... B) ..." lists options, it picks none.
_STATEMENT = (
    r"\b(?P<final>final )?(?:(?:correct|right|best|most likely|most appropriate) )?"
    r"(?:answer|option|choice|response|diagnosis) ?(?:to (?:this|the) question )?"
    + _MARKUP + r" ?" + _VERB + r" ?:? ?" + _MARKUP + r" ?" + _ADVERB + _PICK
)
# "option X is correct", "choice X is the best answer".
_OPTION_IS = r"\b(?:option|choice) "
_OPTION_IS_TAIL = r" ?(?:is|would be|seems) (?:the )?(?:correct|right|best|most likely|answer)\b"
# "I choose X", "I'd select option X".
_CHOOSE = r"\bi(?: would| will|'d)? (?:choose|select|pick|go with) " + _PICK
# "A or B", "A, C", "A and D" after the letter: a list, not a choice. Upper case only, so
# "the answer is B, a granulomatous disease" still counts.
_LETTER_LIST = r"[)\]*]{0,3} ?(?:or|and|/|,|&) ?[(\[*]{0,2}[A-Z0-9](?![A-Za-z0-9])"
# Cues that a later statement overrides earlier ones; looked for just before it.
_FINAL_CUE = r"\b(?:final(?: answer| choice| decision)?|finally|ultimately)\b"
_FINAL_LOOKBACK = 40


class _Statement(NamedTuple):
    letter: str
    final: bool


def parse_choice(
    text: str, letters: Sequence[str], options: Mapping[str, str] | None = None
) -> str | None:
    """Return the option letter `text` commits to, or None when it is absent or ambiguous."""
    if not isinstance(text, str):
        return None
    lookup = _letter_lookup(letters)
    if not lookup:
        return None
    flat = re.sub(r"\s+", " ", text).strip()
    statements = _explicit_statements(flat, lookup)
    if statements:
        return _resolve(statements)
    for rule in (_whole_reply_letter, _leading_line_letter):
        found = rule(text, lookup)
        if found is not None:
            return found
    if options:
        return _unique_option_text(flat, options, lookup)
    return None


def _letter_lookup(letters: Sequence[str]) -> dict[str, str]:
    """Map the casefolded letter to the caller's spelling, keeping single ASCII characters only."""
    lookup: dict[str, str] = {}
    for letter in letters:
        # ASCII only: "ß".casefold() is two characters and would break the one-letter lookup.
        if isinstance(letter, str) and len(letter) == 1 and letter.isascii() and letter.isalnum():
            lookup.setdefault(letter.casefold(), letter)
    return lookup


def _letter_class(lookup: Mapping[str, str]) -> str:
    chars = {c for key in lookup for c in (key, key.upper(), key.lower())}
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


def _letter_token(lookup: Mapping[str, str]) -> str:
    # The lookbehind keeps the letter from being the tail of a word ("answerB").
    return _OPEN + r"(?<![A-Za-z0-9])(?P<letter>" + _letter_class(lookup) + ")" + _CLOSE + _AFTER


def _explicit_statements(flat: str, lookup: Mapping[str, str]) -> list[_Statement]:
    """All explicit answer statements, in reading order."""
    token = _letter_token(lookup)
    patterns = [
        _STATEMENT + token,
        _OPTION_IS + token + _OPTION_IS_TAIL,
        _CHOOSE + token,
        r"\\boxed\{ ?(?P<letter>" + _letter_class(lookup) + r") ?\}",
    ]
    found: dict[int, _Statement] = {}
    for pattern in patterns:
        for match in re.finditer(pattern, flat, flags=re.IGNORECASE):
            start = match.start("letter")
            if start in found or not _plausible_letter(match, flat):
                continue
            final = _is_final(match, flat)
            found[start] = _Statement(lookup[match.group("letter").casefold()], final)
    return [found[pos] for pos in sorted(found)]


def _plausible_letter(match: re.Match[str], flat: str) -> bool:
    """Reject readings that are probably English, not an option letter."""
    letter = match.group("letter")
    groups = match.groupdict()
    wrapped = bool(groups.get("open")) or bool(groups.get("close"))
    tail = flat[match.end("letter") : match.end("letter") + 12]
    # "the answer is a bit unclear": a bare lowercase letter followed by a word is the article.
    if letter.islower() and not wrapped and not re.match(r"(?:[.,:;!?)]|$)", tail):
        return False
    # "the answer is A or B" / "A, C" / "A and D" commits to no single option.
    return not re.match(_LETTER_LIST, tail)


def _is_final(match: re.Match[str], flat: str) -> bool:
    if match.groupdict().get("final"):
        return True
    before = flat[max(0, match.start() - _FINAL_LOOKBACK) : match.start()]
    # Only the current sentence counts, so an earlier "Final answer: A." does not make a
    # later, contradicting "the answer is B" final.
    sentence = re.split(r"[.!?]\s", before)[-1]
    return re.search(_FINAL_CUE, sentence, re.IGNORECASE) is not None


def _resolve(statements: list[_Statement]) -> str | None:
    """Agreeing statements win; disagreement is resolved only by a closing 'final answer'."""
    if len({s.letter for s in statements}) == 1:
        return statements[0].letter
    last = statements[-1]
    return last.letter if last.final else None


def _whole_reply_letter(text: str, lookup: Mapping[str, str]) -> str | None:
    """The reply is only a letter: "C", "C.", "(C)", "**C**", "Option C"."""
    stripped = text.strip()
    if len(stripped) > 40:
        return None
    match = re.fullmatch(
        r"[*_#\s]{0,6}(?:(?:option|choice|answer) ?:? ?)?[(\[]?(?P<letter>"
        + _letter_class(lookup)
        + r")[)\]]?[.:!]?[*_\s]{0,6}",
        stripped,
        flags=re.IGNORECASE,
    )
    return lookup[match.group("letter").casefold()] if match else None


def _leading_line_letter(text: str, lookup: Mapping[str, str]) -> str | None:
    """First non-empty line starts like an option: "B. Sarcoidosis", "(B) ...", "**B)** ..."."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    match = re.match(
        r"[*_#>\s]{0,6}(?:(?:option|choice) )?(?:\((?P<p>"
        + _letter_class(lookup)
        + r")\)|(?P<d>"
        + _letter_class(lookup)
        + r")[).:])[*_]{0,2}(?:\s|$)",
        first[:200],
        flags=re.IGNORECASE,
    )
    if not match:
        return None
    return lookup[(match.group("p") or match.group("d")).casefold()]


def _unique_option_text(
    flat: str, options: Mapping[str, str], lookup: Mapping[str, str]
) -> str | None:
    """The single option whose full text the reply quotes; None if zero or several are quoted."""
    spans: dict[str, list[tuple[int, int]]] = {}
    seen_texts: dict[str, str] = {}
    for key, option_text in options.items():
        letter = lookup.get(str(key).casefold())
        if letter is None or not isinstance(option_text, str) or not option_text.strip():
            continue
        found = [m.span() for m in re.finditer(phrase_pattern(option_text), flat, re.IGNORECASE)]
        if not found:
            continue
        # Two options with the same text cannot be told apart by quoting it.
        normalized = " ".join(option_text.casefold().split())
        if seen_texts.setdefault(normalized, letter) != letter:
            return None
        spans.setdefault(letter, []).extend(found)
    quoted = [letter for letter in spans if _has_free_span(letter, spans)]
    return quoted[0] if len(quoted) == 1 else None


def _has_free_span(letter: str, spans: Mapping[str, list[tuple[int, int]]]) -> bool:
    """True if some occurrence of `letter`'s text is not inside another option's longer text.

    "Pulmonary hypertension" also contains "hypertension": an occurrence that lies wholly
    inside a longer quoted option is part of that option, not a second answer.
    """
    others = sorted(span for other, found in spans.items() if other != letter for span in found)
    starts = [start for start, _ in others]
    reach = list(itertools.accumulate((end for _, end in others), max))
    for start, end in spans[letter]:
        # Among other occurrences starting at or before ours, does any end at or after ours?
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or reach[i] < end:
            return True
    return False


def phrase_pattern(phrase: str) -> str:
    """A regular expression for `phrase` as whole words, any run of white space between them."""
    words = [re.escape(word) for word in phrase.split()]
    return r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"


def contains_phrase(text: str, phrase: str) -> bool:
    return re.search(phrase_pattern(phrase), text, flags=re.IGNORECASE) is not None


# "I" is left out: in a reply it is far more often the pronoun than an option letter.
_ANY_LETTERS = "ABCDEFGHJ"


def parse_unoffered_choice(text: str, offered: Sequence[str]) -> str | None:
    """An option letter the reply commits to although it was not offered (a made-up option), or None."""
    if not isinstance(text, str) or parse_choice(text, offered) is not None:
        return None
    letter = parse_choice(text, list(_ANY_LETTERS))
    return letter if letter is not None and letter not in offered else None


KIND = Kind(
    name="multiple_choice",
    description="an option letter",
    metrics=(ACCURACY, ACCURACY_LENIENT, hallucination_rate("answers that are not among the options offered",
                                                            "mcnemar_exact"), CONFUSION, *COMMON),
    parse=parse,
    score=score,
    parser_version="1",
    scorer_version="1",
    loglik_options=option_continuations,
    lettered=True,
    unoffered_choice=parse_unoffered_choice,
    clue_parse=parse_clue,
)
