"""The benchmarks' real file formats: a task's `DataSpec` (where its examples come from and how they are read),
and one loader per format turning a file into `Example`s. A new format is a loader (here, or in a module of its
own like longhealth.py) and one entry in FORMATS, naming the DataSpec keys only it reads."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeeval.data.example import Example, check_unique_ids
from edgeeval.data.longhealth import DocumentOrder, Documents, DocumentSelection, load_longhealth
from edgeeval.data.multiple_choice import load_multiple_choice
from edgeeval.data.readers import (TABLE_EXTENSIONS, brief, kind_name, optional_text, read_json, required_text, row_id,
                                   show, table_rows, text_cell)
from edgeeval.errors import DataError
from edgeeval.kinds.icd_coding import normalize_code

# What each format looks like, for error messages ("expected <this>").
MEDMCQA = "MedMCQA JSON lines: {id, question, opa, opb, opc, opd, cop, exp, subject_name, ...} per line"
PUBMEDQA = "PubMedQA ori_pqal.json: {PMID: {QUESTION, CONTEXTS: [...], final_decision, ...}, ...}"
MEDNLI = "MedNLI JSON lines: {sentence1, sentence2, gold_label, pairID} per line"
MEQSUM = "MeQSum: columns CHQ and Summary (and File) in .xlsx, .csv, .json or .jsonl"
PROBLEM_SUMMARY = (
    "BioNLP 2023 task 1A CSV: columns File ID, Subjective Sections (or Subjectives), "
    "Objective Sections (or Objectives), Assessment, Summary"
)
MEDISUMQA = ("MeDiSumQA JSON lines: {note_id, with_discharge_summary, without_discharge_summary, Question, Answer} "
             "per line")
CLUE_LETTER = "without_discharge_summary"
"""The letter CLUE shows: without its discharge-instructions paragraphs, from which the questions' answers were
written (CLUE's data/MeDiSumQA/utils.py, find_instructions), so the answers are not in the prompt."""
MEDISUMCODE = "MeDiSumCode JSON lines: {hadm_id, text, icd_codes: [{code, description}, ...]} per line"

_CODE_SHAPE = re.compile(r"[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}")


class DataSpec(BaseModel):
    """Where a task's examples come from (a task TOML's [data] section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """The bundled sample, relative to the task's root (see TaskSpec.prompt); `--data TASK=PATH` points
    at the real file."""
    format: str = "multiple_choice"
    """Which loader reads it: a name in FORMATS."""
    answer_index_base: Literal[0, 1] = 1
    """medmcqa: the number of the first option in `cop`. The released JSON-lines files number them 1-4;
    a Hugging Face `datasets` export (ClassLabel a-d) numbers them 0-3."""
    documents: Documents = "patient"
    """longhealth: which documents accompany a question. 'patient': all of the patient's documents, those
    holding the answer first (task 1); 'answer_and_distractors': the answer's documents plus other patients'
    documents (task 2); 'distractors_only': other patients' documents only, so the question cannot be
    answered (task 3)."""
    distractors: int = Field(default=10, ge=0, le=200)
    """longhealth: how many other patients' documents to add, chosen deterministically per question."""
    unanswerable_option: str | None = None
    """longhealth: text of an extra last option saying the documents do not answer the question."""
    document_order: DocumentOrder = "question"
    """longhealth: how the documents' order (and task 2's and 3's distractors) is drawn. 'question': afresh for
    every question and repetition, as CLUE does. 'patient': once per patient and repetition, so a patient's
    questions show the same documents in the same order (a shared prompt prefix), the question after them: the
    same randomisation, at the patient level instead of the question level."""
    letter_field: str = CLUE_LETTER
    """medisumqa: the field holding the letter the model reads. CLUE's is 'without_discharge_summary' (the letter
    without the discharge instructions its questions were written from); a file without it is refused unless
    this names another field (e.g. 'with_discharge_summary', which puts most answers into the prompt)."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format (formats: {', '.join(FORMATS)})")
        return value

    @model_validator(mode="after")
    def _format_keys(self) -> "DataSpec":
        for name, known in FORMATS.items():
            for key in known.keys:
                if key in self.model_fields_set and self.format != name:
                    raise ValueError(f"'{key}' applies to format '{name}' only (this data is '{self.format}')")
        if self.documents == "distractors_only" and not self.unanswerable_option:
            raise ValueError("documents 'distractors_only' needs 'unanswerable_option' (the answer to give)")
        return self


def load_examples(path: Path, data: DataSpec, labels: Sequence[str] = (), repeats: int = 1) -> list[Example]:
    """A task's examples from `path`, read by its format's loader; with `labels` (label tasks), gold labels
    are checked against them; with `repeats`, each item that many times (formats that vary an item from one
    repetition to the next only)."""
    known = FORMATS[data.format]
    if repeats > 1:
        assert known.load_repeated is not None, "TaskSpec allows repeats only for formats that vary an item"
        examples = known.load_repeated(Path(path), data, repeats)
    else:
        examples = known.load(Path(path), data)
    return [_checked_label(example, labels) for example in examples] if labels else examples


def _checked_label(example: Example, labels: Sequence[str]) -> Example:
    by_fold = {label.casefold(): label for label in labels}
    label = by_fold.get(example.gold.casefold())
    if label is None:
        raise DataError(
            f"{example.source}: label {brief(example.gold)} is not one of the task's labels ({', '.join(labels)})"
        )
    # The labels in their order, for a template that lists them (`--permute` rotates that order).
    fields = example.fields if "labels" in example.fields else {**example.fields, "labels": list(labels)}
    return example.model_copy(update={"gold": label, "fields": fields})


def _finish(path: Path, examples: list[Example]) -> list[Example]:
    check_unique_ids(path, examples)
    return examples


# --- MedMCQA ---------------------------------------------------------------------------------------------


def load_medmcqa(path: Path, data: DataSpec) -> list[Example]:
    """MedMCQA (train/dev.json: JSON lines despite the name). Fields: question, options (A-D), explanation,
    subject, topic. `cop` is the correct option's number, counted from `data.answer_index_base`."""
    rows = table_rows(path, MEDMCQA)
    return _finish(path, [_medmcqa(rec, src, f"{path.stem}-{n}", data.answer_index_base)
                          for n, (src, rec) in enumerate(rows, 1)])


def _medmcqa(record: dict[str, Any], source: str, default_id: str, base: int) -> Example:
    question = required_text(record, ("question",), source, MEDMCQA)
    options = {}
    for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd")):
        if key not in record:
            raise DataError(f"{source}: missing field {key!r} (expected {MEDMCQA})")
        # A few released options are blank; the letters still stand, so keep them as empty text.
        options[letter] = text_cell(record[key], key, source) or ""
    fields = {"question": question, "options": options,
              "explanation": optional_text(record, ("exp",), source),
              "subject": optional_text(record, ("subject_name",), source),
              "topic": optional_text(record, ("topic_name",), source)}
    return Example(id=row_id(record, "id", source, default_id), fields=fields,
                   gold="ABCD"[_cop(record, source, base)], source=source)


def _cop(record: dict[str, Any], source: str, base: int) -> int:
    raw = record.get("cop")
    text = text_cell(raw, "cop", source) if "cop" in record else None
    if text is None or text == "-1":
        raise DataError(f"{source}: no answer ('cop' is missing or -1; the MedMCQA test split has no public answers)")
    if not re.fullmatch(r"\d", text):
        raise DataError(f"{source}: 'cop' must be the correct option's number, got {brief(text)}")
    index = int(text) - base
    if not 0 <= index < 4:
        hint = " (a Hugging Face export counts from 0: set answer_index_base = 0)" if int(text) == 0 else ""
        raise DataError(f"{source}: 'cop' {text} is outside {base}-{base + 3} (answer_index_base = {base}){hint}")
    return index


# --- PubMedQA --------------------------------------------------------------------------------------------


def load_pubmedqa(path: Path, data: DataSpec) -> list[Example]:
    """PubMedQA's expert-labelled ori_pqal.json. Fields: question, contexts (list of abstract sections),
    context_labels (their headings), year. Gold: final_decision (yes / no / maybe)."""
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: unsupported extension {path.suffix!r} (expected {PUBMEDQA})")
    items = read_json(path)
    if not isinstance(items, dict):
        raise DataError(f"{path}: top level is {kind_name(items)}; expected {PUBMEDQA}")
    if not items:
        raise DataError(f"{path}: no data rows (expected {PUBMEDQA})")
    return _finish(path, [_pubmedqa(str(pmid), item, f"{path}: key {show(str(pmid))}") for pmid, item in items.items()])


def _pubmedqa(pmid: str, item: Any, source: str) -> Example:
    if not isinstance(item, dict):
        raise DataError(f"{source}: expected an object {{QUESTION, CONTEXTS, final_decision, ...}}, got {kind_name(item)}")
    question = required_text(item, ("QUESTION",), source, PUBMEDQA)
    contexts = _text_list(item, "CONTEXTS", source, required=True)
    labels = _text_list(item, "LABELS", source, required=False)
    if labels and len(labels) != len(contexts):
        raise DataError(f"{source}: {len(labels)} LABELS for {len(contexts)} CONTEXTS")
    fields = {"question": question, "contexts": contexts, "context_labels": labels,
              "year": optional_text(item, ("YEAR",), source)}
    gold = required_text(item, ("final_decision",), source, PUBMEDQA).lower()
    return Example(id=pmid, fields=fields, gold=gold, source=source)


def _text_list(item: dict[str, Any], key: str, source: str, required: bool) -> list[str]:
    value = item.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise DataError(f"{source}: {key!r} must be a non-empty list of texts, got {kind_name(value)}")
    texts = [text_cell(v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if any(t is None for t in texts):
        raise DataError(f"{source}: {key!r} holds an empty entry")
    return cast("list[str]", texts)


# --- MedNLI ----------------------------------------------------------------------------------------------


def load_mednli(path: Path, data: DataSpec) -> list[Example]:
    """MedNLI (mli_test_v1.jsonl). Fields: sentence1 (premise), sentence2 (hypothesis). Gold: gold_label."""
    rows = table_rows(path, MEDNLI, ("sentence1", "sentence2", "gold_label"))
    examples = []
    for n, (source, record) in enumerate(rows, 1):
        fields = {key: required_text(record, (key,), source, MEDNLI) for key in ("sentence1", "sentence2")}
        gold = required_text(record, ("gold_label",), source, MEDNLI).lower()
        examples.append(Example(id=row_id(record, "pairID", source, f"{path.stem}-{n}"), fields=fields,
                                gold=gold, source=source))
    return _finish(path, examples)


# --- MeQSum ----------------------------------------------------------------------------------------------


def load_meqsum(path: Path, data: DataSpec) -> list[Example]:
    """MeQSum (the released .xlsx, or .csv/.json/.jsonl with the same columns). Fields: question (the
    consumer health question, CHQ). Gold: Summary."""
    rows = table_rows(path, MEQSUM, ("CHQ", "Summary"), (*TABLE_EXTENSIONS, ".xlsx"))
    examples = [
        Example(id=row_id(record, "File", source, f"{path.stem}-{n}"),
                fields={"question": required_text(record, ("CHQ",), source, MEQSUM)},
                gold=required_text(record, ("Summary",), source, MEQSUM), source=source)
        for n, (source, record) in enumerate(rows, 1)
    ]
    return _finish(path, examples)


# --- Problem Summary (BioNLP 2023 task 1A) ---------------------------------------------------------------

_SUBJECTIVE = ("Subjective Sections", "Subjectives")  # the training file's name, then the test file's
_OBJECTIVE = ("Objective Sections", "Objectives")


def load_problem_summary(path: Path, data: DataSpec) -> list[Example]:
    """BioNLP 2023 task 1A progress notes. Fields: subjective, objective, assessment, problems (the gold
    list). Gold: Summary, the problems separated by ';'."""
    rows = table_rows(path, PROBLEM_SUMMARY, ("Assessment", "Summary"))
    examples = []
    for n, (source, record) in enumerate(rows, 1):
        summary = required_text(record, ("Summary",), source, PROBLEM_SUMMARY)
        fields = {"subjective": optional_text(record, _SUBJECTIVE, source),
                  "objective": optional_text(record, _OBJECTIVE, source),
                  "assessment": required_text(record, ("Assessment",), source, PROBLEM_SUMMARY),
                  "problems": [p.strip() for p in summary.split(";") if p.strip()]}
        examples.append(Example(id=row_id(record, "File ID", source, f"{path.stem}-{n}"), fields=fields,
                                gold=summary, source=source))
    return _finish(path, examples)


# --- MeDiSumQA -------------------------------------------------------------------------------------------


def load_medisumqa(path: Path, data: DataSpec) -> list[Example]:
    """MeDiSumQA. Fields: discharge_summary (the letter from `data.letter_field`), question. Gold: Answer. A note
    has several questions, so the id is '<note_id>-<k>' (the k-th question of that note in file order)."""
    rows = table_rows(path, MEDISUMQA)
    if rows and data.letter_field not in rows[0][1]:
        hint = (" (CLUE shows the letter without its discharge instructions, which hold most answers; name another "
                "field with data.letter_field in the task TOML to read it instead)") if data.letter_field == CLUE_LETTER else ""
        raise DataError(f"{rows[0][0]}: no field '{data.letter_field}'{hint}")
    seen: dict[tuple[str, str], str]
    per_note: dict[str, int]
    examples, seen, per_note = [], {}, {}
    for source, record in rows:
        note = required_text(record, ("note_id",), source, MEDISUMQA)
        question = required_text(record, ("Question",), source, MEDISUMQA)
        if (note, question) in seen:
            raise DataError(f"{source}: duplicated question for note {show(note)} (first at {seen[note, question]})")
        seen[note, question] = source
        per_note[note] = per_note.get(note, 0) + 1
        fields = {"discharge_summary": required_text(record, (data.letter_field,), source, MEDISUMQA),
                  "question": question}
        examples.append(Example(id=f"{note}-{per_note[note]}", fields=fields,
                                gold=required_text(record, ("Answer",), source, MEDISUMQA), source=source))
    return _finish(path, examples)


# --- MeDiSumCode -----------------------------------------------------------------------------------------


def load_medisumcode(path: Path, data: DataSpec) -> list[Example]:
    """MeDiSumCode. Fields: discharge_summary, codes (normalised: upper case, no dots, in file order, a repeated
    code kept as CLUE keeps it), descriptions. Gold: the codes joined by ';'."""
    rows = table_rows(path, MEDISUMCODE, extensions=(".json", ".jsonl"))
    examples = []
    for n, (source, record) in enumerate(rows, 1):
        codes, descriptions = _icd_codes(record, source)
        fields = {"discharge_summary": required_text(record, ("text",), source, MEDISUMCODE),
                  "codes": codes, "descriptions": descriptions}
        examples.append(Example(id=row_id(record, "hadm_id", source, f"{path.stem}-{n}"), fields=fields,
                                gold=";".join(codes), source=source))
    return _finish(path, examples)


def _icd_codes(record: dict[str, Any], source: str) -> tuple[list[str], list[str]]:
    value = record.get("icd_codes")
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: 'icd_codes' must be a non-empty list, got {kind_name(value)} (expected {MEDISUMCODE})")
    codes: list[str] = []
    descriptions: list[str] = []
    for i, entry in enumerate(value):
        raw = entry.get("code") if isinstance(entry, dict) else entry
        code = normalize_code(text_cell(raw, f"icd_codes[{i}]", source) or "")
        if not _CODE_SHAPE.fullmatch(code):
            raise DataError(f"{source}: icd_codes[{i}] is not an ICD-10 code: {brief(raw)}")
        codes.append(code)  # a code MIMIC lists twice (at another sequence number) stays twice, as CLUE's gold has it
        description = entry.get("description") if isinstance(entry, dict) else None
        descriptions.append(text_cell(description, f"icd_codes[{i}].description", source) or "")
    return codes, descriptions


def load_longhealth_questions(path: Path, data: DataSpec, repeats: int = 1) -> list[Example]:
    selection = DocumentSelection(data.documents, data.distractors, data.unanswerable_option, data.document_order)
    return load_longhealth(path, selection, repeats)


@dataclass(frozen=True)
class Format:
    """A file format: its loader, and the DataSpec keys that only it reads (setting one for another format is a
    mistake worth reporting)."""

    load: Callable[[Path, DataSpec], list[Example]]
    keys: tuple[str, ...] = ()
    load_repeated: Callable[[Path, DataSpec, int], list[Example]] | None = None
    """For a format whose items are asked differently each time (LongHealth: the documents' order, the
    distractors): every item `repeats` times, each repetition an example of its own."""


FORMATS: dict[str, Format] = {
    "multiple_choice": Format(load_multiple_choice),
    "medmcqa": Format(load_medmcqa, keys=("answer_index_base",)),
    "pubmedqa": Format(load_pubmedqa),
    "mednli": Format(load_mednli),
    "meqsum": Format(load_meqsum),
    "problem_summary": Format(load_problem_summary),
    "medisumqa": Format(load_medisumqa, keys=("letter_field",)),
    "medisumcode": Format(load_medisumcode),
    "longhealth": Format(load_longhealth_questions, keys=("documents", "distractors", "unanswerable_option",
                                                         "document_order"),
                         load_repeated=load_longhealth_questions),
}
