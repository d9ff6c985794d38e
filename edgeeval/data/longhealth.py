"""LongHealth (benchmark_v5.json): patients' records, their questions, and the documents each task shows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeeval.data.example import Example, check_unique_ids
from edgeeval.data.readers import brief, kind_name, read_json, required_text, show, text_cell
from edgeeval.errors import DataError

LONGHEALTH = (
    "LongHealth benchmark_v5.json: {patient: {texts: {text_0: ..., ...}, questions: [{No, question, "
    "answer_a, ..., answer_e, correct, answer_location}, ...]}, ...}"
)
Documents = Literal["patient", "answer_and_distractors", "distractors_only"]
DocumentOrder = Literal["question", "patient"]


@dataclass(frozen=True)
class DocumentSelection:
    """Which documents accompany a question: the task TOML's data.documents, data.distractors and
    data.unanswerable_option (see edgeeval.data.formats.DataSpec)."""

    documents: Documents = "patient"
    distractors: int = 10
    unanswerable_option: str | None = None
    order: DocumentOrder = "question"
    """'question': each question's documents drawn and ordered from its own seed (CLUE); 'patient': from the
    patient's, so all of a patient's questions in a repetition show the same documents in the same order."""


REDRAWS = 64
"""How often a repetition is drawn again when it would show what an earlier one showed (enough to find the
orders left of a few documents; beyond, a repeat stays, as when there are fewer orders than repetitions)."""
_ANSWER_KEYS = ("answer_a", "answer_b", "answer_c", "answer_d", "answer_e")
_LETTERS = "ABCDEFGHIJ"


def load_longhealth(path: Path, selection: DocumentSelection, repeats: int = 1) -> list[Example]:
    """One example per question, or `repeats` of them (repetitions 0 .. repeats-1). Fields: question, options
    ({'A': text, ...}, plus the `unanswerable_option` last when the task has one) and documents ([{'text',
    'rank'}, ...] in the order shown; rank 0 is the most relevant, the order in which a context policy keeps them).

    Which documents: see DocumentSelection. Distractors are other patients' documents, chosen and the
    shown order shuffled by hashing the example id (and the repetition), so every run shows the same prompts,
    and each repetition another order and, for tasks 2 and 3, other distractors: CLUE's five shuffles of task 1
    and five runs of tasks 2 and 3, drawn from a seed instead of Python's unseeded random. A repetition that
    would show a question's documents exactly as an earlier one did is drawn again (from the next seed), so
    the repetitions are distinct wherever the documents allow it (three documents have six orders)."""
    patients = read_json(path)
    if not isinstance(patients, dict) or not patients:
        raise DataError(f"{path}: top level is {kind_name(patients)}; expected {LONGHEALTH}")
    records = {key: _patient(path, str(key), value) for key, value in patients.items()}
    if selection.documents != "patient" and selection.distractors < 1:
        raise DataError(f"{path}: documents '{selection.documents}' needs distractors >= 1")
    library = [(key, text_id, text) for key, (texts, _) in records.items() for text_id, text in texts.items()]
    repetitions: list[int | None] = [None] if repeats == 1 else list(range(repeats))
    examples: list[Example] = []
    for key, (texts, questions) in records.items():
        for number, question in enumerate(questions, 1):
            shown: set[tuple[str, ...]] = set()  # what this question's repetitions have shown so far
            examples.extend(_example(path, key, number, question, texts, library, selection, repeat, shown)
                            for repeat in repetitions)
    if not examples:
        raise DataError(f"{path}: no questions (expected {LONGHEALTH})")
    check_unique_ids(path, examples)
    return examples


def _patient(path: Path, key: str, value: Any) -> tuple[dict[str, str], list[Any]]:
    where = f"{path}: patient {show(key)}"
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object with 'texts' and 'questions', got {kind_name(value)}")
    texts, questions = value.get("texts"), value.get("questions")
    if not isinstance(texts, dict) or not texts:
        raise DataError(f"{where}: 'texts' must be a non-empty object {{text_0: ..., ...}}, got {kind_name(texts)}")
    if not isinstance(questions, list):
        raise DataError(f"{where}: 'questions' must be a list, got {kind_name(questions)}")
    clean = {}
    for text_id, text in texts.items():
        body = text_cell(text, f"texts.{text_id}", where)
        if body is None:
            raise DataError(f"{where}: document {show(str(text_id))} is empty")
        clean[str(text_id)] = body
    return clean, questions


def _example(path: Path, key: str, number: int, question: Any, texts: dict[str, str],
             library: list[tuple[str, str, str]], selection: DocumentSelection, repeat: int | None,
             shown: set[tuple[str, ...]]) -> Example:
    source = f"{path}: patient {show(key)} question {number}"
    if not isinstance(question, dict):
        raise DataError(f"{source}: expected an object, got {kind_name(question)} ({LONGHEALTH})")
    options = _options(question, source)
    gold = _letter_of(question, options, source)
    if selection.unanswerable_option:
        letter = _LETTERS[len(options)]
        options[letter] = selection.unanswerable_option
        gold = letter if selection.documents == "distractors_only" else gold
    example_id = f"{key}-q{_number(question, number, source)}"
    answer_ids = _answer_ids(question, texts, source)
    unit = example_id if selection.order == "question" else f"{key}-patient"
    seed = unit if repeat is None else f"{unit}#{repeat}"
    documents = _documents(seed, key, texts, answer_ids, library, selection, source)
    for draw in range(1, REDRAWS + 1):
        if _shown(documents) not in shown:
            break
        documents = _documents(f"{seed}+{draw}", key, texts, answer_ids, library, selection, source)
    shown.add(_shown(documents))
    fields = {"question": required_text(question, ("question",), source, LONGHEALTH), "options": options,
              "documents": documents}
    return Example(id=example_id, fields=fields, gold=gold, source=source, repeat=repeat)


def _options(question: dict[str, Any], source: str) -> dict[str, str]:
    return {letter: required_text(question, (key,), source, LONGHEALTH) for letter, key in zip(_LETTERS, _ANSWER_KEYS)}


def _letter_of(question: dict[str, Any], options: dict[str, str], source: str) -> str:
    """The letter of the option whose text is `correct`: an exact match (ignoring case and spacing), else
    the single option that contains it (the rule CLUE's scorer applies)."""
    correct = " ".join(required_text(question, ("correct",), source, LONGHEALTH).casefold().split())
    flat = {letter: " ".join(text.casefold().split()) for letter, text in options.items()}
    exact = [letter for letter, text in flat.items() if text == correct]
    within = [letter for letter, text in flat.items() if correct in text]
    found = exact or within
    if len(found) != 1:
        what = "matches no option" if not found else f"matches options {', '.join(found)}"
        raise DataError(f"{source}: 'correct' {brief(question['correct'])} {what}")
    return found[0]


def _number(question: dict[str, Any], default: int, source: str) -> str:
    value = question.get("No")
    return (text_cell(value, "No", source) or str(default)) if value is not None else str(default)


def _answer_ids(question: dict[str, Any], texts: dict[str, str], source: str) -> list[str]:
    location = question.get("answer_location") or {}
    if not isinstance(location, dict):
        raise DataError(f"{source}: 'answer_location' must be an object keyed by text id, got {kind_name(location)}")
    unknown = [str(k) for k in location if str(k) not in texts]
    if unknown:
        raise DataError(f"{source}: answer_location names {show(unknown[0])}, which is not one of the patient's texts")
    return [str(k) for k in location]


def _documents(seed: str, key: str, texts: dict[str, str], answer_ids: list[str],
               library: list[tuple[str, str, str]], selection: DocumentSelection, source: str) -> list[dict[str, Any]]:
    answer = [(key, t) for t in answer_ids]
    if selection.documents == "patient":
        chosen = answer + [(key, t) for t in texts if t not in answer_ids]
    else:
        others = sorted(((k, t) for k, t, _ in library if k != key), key=lambda d: _hash(seed, *d))
        if not others:
            raise DataError(f"{source}: no other patient's documents to use as distractors")
        chosen = (answer if selection.documents == "answer_and_distractors" else []) + others[: selection.distractors]
        if selection.documents == "answer_and_distractors" and not answer_ids:
            raise DataError(f"{source}: no answer_location, so task 2 cannot include the answer's documents")
    text_of = {(k, t): text for k, t, text in library}
    ranked: list[dict[str, Any]] = [{"text": text_of[doc], "rank": rank, "key": doc} for rank, doc in enumerate(chosen)]
    shown = sorted(ranked, key=lambda d: _hash(seed, "order", *d["key"]))
    return [{"text": d["text"], "rank": d["rank"]} for d in shown]


def _shown(documents: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(d["text"] for d in documents)


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
