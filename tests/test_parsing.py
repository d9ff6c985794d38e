"""Tests for the kinds' answer parsers (edgeeval.kinds): realistic model replies, edge cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeeval.kinds.abstention import parse_abstention
from edgeeval.kinds.icd_coding import parse_icd_codes
from edgeeval.kinds.label import parse_label
from edgeeval.kinds.multiple_choice import parse_choice, parse_unoffered_choice
from edgeeval.kinds.summary import normalize_problem, parse_problem_list

from conftest import takes_at_most

LETTERS = ("A", "B", "C", "D", "E")
OPTIONS = {
    "A": "Hypertension",
    "B": "Pulmonary hypertension",
    "C": "Sarcoidosis",
    "D": "Tuberculosis",
    "E": "Lymphoma",
}

REPLIES = [
    # Explicit statements.
    ("The answer is (C).", "C"),
    ("**Answer: B**", "B"),
    ("**Answer:** B", "B"),
    ("Answer: (D) Tuberculosis", "D"),
    ("the correct answer is **D**", "D"),
    ("The correct option is E.", "E"),
    ("Final answer: A", "A"),
    ("answer: c", "C"),
    ("Answer:\n\n(A)", "A"),
    ("The answer to this question is B.", "B"),
    ("Answer: Option C", "C"),
    ("Option C is correct because the biopsy shows non-caseating granulomas.", "C"),
    ("I would choose option B.", "B"),
    ("Final answer: $\\boxed{D}$", "D"),
    ("The answer is therefore C: sarcoidosis.", "C"),
    ("The best answer is [B].", "B"),
    ("The most likely diagnosis is C.", "C"),
    (
        "Let's think step by step.\n\n1. Bilateral hilar adenopathy suggests a granulomatous"
        " process.\n2. Elevated ACE supports it.\n\nThe answer is C.",
        "C",
    ),
    ("I think A... no, the final answer is D", "D"),
    ("Answer: A\nHmm, reconsidering the imaging.\n\n**Final Answer:** B", "B"),
    ("Option A is wrong. Option B is wrong. The correct option is C.", "C"),
    ("The answer is C. To confirm: the answer is C.", "C"),
    ("The answer is B, a granulomatous disease.", "B"),
    # Bare letters and option lines.
    ("C", "C"),
    ("c.", "C"),
    ("(C)", "C"),
    ("**B**", "B"),
    ("Option D", "D"),
    ("C) Sarcoidosis", "C"),
    ("B. Pulmonary hypertension\n\nExplanation: right heart strain on echo.", "B"),
    ("  \n(E) Lymphoma\nBecause of B symptoms.", "E"),
    # Option text only.
    ("I believe this is sarcoidosis.", "C"),
    ("Pulmonary hypertension is most consistent with the findings.", "B"),
    # Cannot be told.
    ("The answer is A. Wait, actually the answer is B.", None),
    ("Final answer: A. The answer is B", None),
    ("The answer is A or B.", None),
    ("Answers: A, C", None),
    ("I cannot provide medical advice. Please consult a physician.", None),
    ("A 45-year-old man presents with dyspnea.", None),
    ("The answer is a bit unclear from the vignette.", None),
    ("The answer is B12 deficiency.", None),
    ("The answer is F.", None),
    ("Sarcoidosis or tuberculosis could both explain this.", None),
    ("Not hypertension but pulmonary hypertension.", None),
    ("Answer choices: A) Hypertension B) Pulmonary hypertension", None),
    ("", None),
    ("   \n\t ", None),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_parse_choice_realistic_replies(reply: str, expected: str | None) -> None:
    assert parse_choice(reply, LETTERS, OPTIONS) == expected


def test_table_is_large_enough() -> None:
    assert len(REPLIES) >= 30


def test_letter_outside_letters_is_not_returned() -> None:
    assert parse_choice("The answer is E.", ("A", "B", "C", "D")) is None
    assert parse_choice("E", ("A", "B", "C", "D")) is None


def test_option_text_needs_options() -> None:
    assert parse_choice("I believe this is sarcoidosis.", LETTERS) is None


def test_shorter_option_inside_longer_one_is_not_a_second_answer() -> None:
    assert parse_choice("pulmonary hypertension", LETTERS, OPTIONS) == "B"
    assert parse_choice("essential hypertension", LETTERS, OPTIONS) == "A"


def test_identical_option_texts_are_ambiguous() -> None:
    options = {"A": "None of the above", "B": "none of  the above"}
    assert parse_choice("None of the above.", ("A", "B"), options) is None


def test_returns_callers_spelling_of_letter() -> None:
    assert parse_choice("The answer is B.", ("a", "b", "c")) == "b"


def test_empty_letters_gives_none() -> None:
    assert parse_choice("The answer is B.", ()) is None


def test_non_ascii_letters_are_ignored() -> None:
    assert parse_choice("The answer is ß.", ("ß", "İ")) is None
    assert parse_choice("SS", ("ß",)) is None


def test_explicit_statement_beats_first_line() -> None:
    assert parse_choice("A. is tempting, but the answer is C.", LETTERS) == "C"


@pytest.mark.parametrize(
    "reply",
    [
        "answer " + " " * 100_000,
        "answer is " * 10_000,
        "(" * 100_000,
        "A" * 100_000,
        "**" * 50_000,
        "final answer: " * 7_000,
        "a. " * 30_000,
        "hypertension " * 8_000,
    ],
)
def test_long_adversarial_inputs_are_fast(reply: str) -> None:
    with takes_at_most(cpu_s=2.0):
        parse_choice(reply, LETTERS, OPTIONS)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Entailment.", "entailment"),
        ("The relation is CONTRADICTION because the premise denies it.", "contradiction"),
        ("neutral", "neutral"),
        ("It is not entailment, it is neutral.", None),
        ("I am unsure.", None),
        ("The hypothesis is entailed.", None),
    ],
)
def test_parse_label_nli(reply: str, expected: str | None) -> None:
    assert parse_label(reply, ("entailment", "contradiction", "neutral")) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Yes.", "yes"),
        ("**Maybe** - the evidence is mixed.", "maybe"),
        ("Yes, although there is no randomized evidence.", None),
        ("Nothing conclusive.", None),
        ("Answer: NO", "no"),
    ],
)
def test_parse_label_pubmedqa(reply: str, expected: str | None) -> None:
    assert parse_label(reply, ("yes", "no", "maybe")) == expected


def test_parse_label_underscore_label_is_one_word() -> None:
    labels = ("entailment", "not_entailment")
    assert parse_label("not_entailment", labels) == "not_entailment"


_letter_sets = st.lists(
    st.sampled_from("ABCDEFGHIJabcdxyz0123"), min_size=0, max_size=6, unique=True
)
_replies = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(
            ["answer", "is", "final", ":", "(", ")", "*", "A", "b", "C", "option", "or", " ", "\n",
             "correct", "the", ".", "boxed{", "}", "I choose", ",", "Sarcoidosis"]
        ),
        max_size=40,
    ).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(reply=_replies, letters=_letter_sets)
def test_parse_choice_never_raises_and_stays_in_letters(reply: str, letters: list[str]) -> None:
    options = {letter: f"choice {letter} text" for letter in letters}
    for opts in (None, options):
        result = parse_choice(reply, letters, opts)
        assert result is None or result in letters


@settings(max_examples=200, deadline=None)
@given(
    reply=st.text(max_size=200),
    labels=st.lists(st.text(min_size=0, max_size=12), max_size=5),
)
def test_parse_label_never_raises_and_stays_in_labels(reply: str, labels: list[str]) -> None:
    result = parse_label(reply, labels)
    assert result is None or result in labels


@settings(max_examples=100, deadline=None)
@given(letter=st.sampled_from(LETTERS), prefix=st.text(alphabet="xyz .\n", max_size=30))
def test_explicit_answer_is_found_after_any_filler(letter: str, prefix: str) -> None:
    assert parse_choice(f"{prefix}\nThe answer is ({letter}).", LETTERS) == letter


# --- LongHealth task 3: abstaining ---------------------------------------------------------------------

T3_OPTIONS = {**{letter: f"Drug {letter}" for letter in "ABCDE"}, "F": "Question cannot be answered with provided documents"}


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("The correct answer is F: Question cannot be answered with provided documents.", "F"),
        ("The correct answer is B: Drug B.", "B"),
        ("The documents do not mention which drug was given.", "F"),
        ("This cannot be answered from the provided letters.", "F"),
        ("There is not enough information in the documents.", "F"),
        ("Unanswerable.", "F"),
        ("The dose is not documented, but the answer is C.", "C"),  # a chosen option wins
        ("Question cannot be answered with provided documents", "F"),  # the option's text, quoted
        ("I think it was a blood thinner.", None),
        ("", None),
    ],
)
def test_parse_abstention(reply: str, expected: str | None) -> None:
    assert parse_abstention(reply, T3_OPTIONS, "F") == expected


@settings(max_examples=100, deadline=None)
@given(reply=st.text(max_size=200))
def test_parse_abstention_never_raises(reply: str) -> None:
    assert parse_abstention(reply, T3_OPTIONS, "F") in (None, *T3_OPTIONS)


# --- options that were never offered -------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, expected",
    [("The answer is F.", "F"), ("**Answer: G**", "G"), ("The answer is B.", None), ("I am not sure.", None),
     ("The answer is I.", None), ("F", "F"), ("The answer is B or F.", None)],
)
def test_parse_unoffered_choice(reply: str, expected: str | None) -> None:
    assert parse_unoffered_choice(reply, list("ABCDE")) == expected


# --- ICD-10 codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("ICD-10-CM codes: I50.23, E11.22, N18.3", ["I5023", "E1122", "N183"]),
        ("I10\nE119\nI10", ["I10", "E119"]),  # each code once, in order
        ("C4A.9 (Merkel cell carcinoma), M1A.00", ["C4A9", "M1A00"]),
        ("U07.1 COVID-19", []),  # U codes are left out, as in CLUE
        ("e11.9 and ICD10 and A1 and ABC12", []),  # lower case, words and near misses are not codes
        ("(K35.80)", ["K3580"]),
        ("", []),
    ],
)
def test_parse_icd_codes(reply: str, expected: list[str]) -> None:
    assert parse_icd_codes(reply) == expected


# --- problem lists ---------------------------------------------------------------------------------------


def test_parse_problem_list_splits_semicolons_lines_and_list_markers() -> None:
    reply = "1. Sepsis; Acute kidney injury\n- Hypokalemia\n#COPD;\n\n(2) Delirium"
    assert parse_problem_list(reply) == ["Sepsis", "Acute kidney injury", "Hypokalemia", "COPD", "Delirium"]


def test_normalize_problem_ignores_case_punctuation_and_spacing() -> None:
    assert normalize_problem("  Acute-on-chronic  heart failure (HFrEF). ") == "acute on chronic heart failure hfref"


# --- CLUE's rules (answer_rule = "clue") beside the lenient parser ------------------------------------------

def test_longhealth_clue_rule_is_the_first_exact_statement_only() -> None:
    from edgeeval.kinds import multiple_choice

    options = {letter: f"option {letter}" for letter in "ABCDE"}
    lower = "the correct answer is B: option B."
    assert multiple_choice.parse_clue(lower, options, [], "B") is None  # case-sensitive, as CLUE's re.findall
    assert multiple_choice.parse(lower, options, [], "B") == "B"
    assert multiple_choice.parse_clue("The correct answer is B. option B", options, [], "B") is None  # no colon
    first = "The correct answer is C: option C. On reflection, The correct answer is B: option B."
    assert multiple_choice.parse_clue(first, options, [], "B") == "C"


def test_longhealth_task3_clue_rule_counts_only_the_unanswerable_letter() -> None:
    from edgeeval.kinds import abstention

    options = {**{letter: f"option {letter}" for letter in "ABCDE"}, "F": "Question cannot be answered"}
    assert abstention.KIND.clue_parse("The correct answer is F: Question cannot be answered.", options, [], "F") == "F"
    said = "The documents do not mention it, so it cannot be answered."
    assert abstention.KIND.clue_parse(said, options, [], "F") is None
    assert abstention.parse(said, options, [], "F") == "F"  # the lenient reading counts saying so


def test_mednli_clue_rule_is_gold_exactly_once() -> None:
    from edgeeval.kinds import label

    labels = ["entailment", "contradiction", "neutral"]
    both = "entailment, not contradiction"
    assert label.parse_clue(both, {}, labels, "entailment") == "entailment"  # right for CLUE
    assert label.parse(both, {}, labels, "entailment") is None  # two labels: invalid for the lenient parser
    twice = "neutral. The sentences are neutral."
    assert label.parse_clue(twice, {}, labels, "neutral") is None  # gold twice: not an answer for CLUE
    assert label.parse(twice, {}, labels, "neutral") == "neutral"
    assert label.parse_clue("CONTRADICTION", {}, labels, "entailment") == "contradiction"  # a wrong answer
    assert label.parse_clue("Entailment.", {}, labels, "entailment") == "entailment"  # upper-cased, as CLUE compares


def test_scoring_reads_with_the_tasks_rule_and_keeps_the_lenient_reading() -> None:
    from edgeeval.scoring.records import parse_answer

    record = {"output": "the correct answer is B: option B.", "gold": "B", "error": None,
              "options": {letter: f"option {letter}" for letter in "ABCDE"}}
    assert parse_answer(record, "multiple_choice", [], "clue") is None
    assert parse_answer(record, "multiple_choice", [], "lenient") == "B"
    cued = {**record, "output": "B: option B."}  # the reply after a cue the task sent
    assert parse_answer(cued, "multiple_choice", [], "clue", prefix="The correct answer is ") == "B"
    summary = {"output": "Is it safe?", "gold": "x", "error": None}
    assert parse_answer(summary, "summary", [], "lenient", prefix="Question: ") == "Is it safe?"
