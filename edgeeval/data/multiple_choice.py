"""Multiple-choice questions (MedQA, JAMA and NEJM case challenges): CSV, JSON records or pandas columns, and
JSON lines; every row becomes an example or the load fails naming the file and the row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeeval.data.example import Example, check_unique_ids
from edgeeval.data.readers import (Row, brief, column_rows, csv_rows, jsonl_rows, kind_name, list_rows, parse_json,
                                   read_text, row_id, show, text_cell)
from edgeeval.errors import DataError

_OPTION_COLUMNS = ("opa", "opb", "opc", "opd", "ope")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_REQUIRED = ("question", "answer_idx")
_CSV_COLUMNS = "question, opa, opb, opc, opd[, ope], answer_idx[, answer, explanation, id]"
_JSON_LAYOUTS = (
    "a list of objects [{question, opa, opb, ..., answer_idx}, ...] or pandas column-oriented "
    "{column: {row: value}} (DataFrame.to_json())"
)


def load_multiple_choice(path: Path, data: Any = None) -> list[Example]:
    """Load multiple-choice items from .csv (JAMA/Medbullets), .json (records or pandas columns) or .jsonl (MedQA).

    Every row becomes an `Example` or the whole load fails with a `DataError` naming the file and line/row.
    `data` (the task's DataSpec) is accepted for the loader registry and not needed here.
    """
    path = Path(path)
    loaders = {".csv": _load_csv, ".json": _load_json, ".jsonl": jsonl_rows}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unsupported data file extension {path.suffix!r}; expected .csv, .json or .jsonl")
    rows = loader(path, read_text(path))
    if not rows:
        raise DataError(f"{path}: no data rows")
    examples = [_example(record, source, f"{path.stem}-{n}") for n, (source, record) in enumerate(rows, 1)]
    check_unique_ids(path, examples)
    return examples


def _load_csv(path: Path, text: str) -> list[Row]:
    return csv_rows(path, text, _REQUIRED, _CSV_COLUMNS)


def _load_json(path: Path, text: str) -> list[Row]:
    """A list of objects, or pandas' column-oriented {column: {row key: value}}."""
    data = parse_json(text, path, None)
    if isinstance(data, list):
        return list_rows(path, data)
    if isinstance(data, dict) and all(isinstance(col, dict) for col in data.values()):
        if data and "question" not in data:
            names = ", ".join(show(c) for c in list(data)[:12])
            raise DataError(
                f"{path}: column-oriented JSON has no 'question' column (columns: {names}); expected {_JSON_LAYOUTS}"
            )
        return column_rows(path, data)
    hint = " (for JSON Lines name the file .jsonl)" if isinstance(data, dict) and "question" in data else ""
    raise DataError(f"{path}: unrecognised JSON structure (top level is {kind_name(data)}); expected {_JSON_LAYOUTS}{hint}")


def _example(record: dict[str, Any], source: str, default_id: str) -> Example:
    """Validate one raw row and build its Example."""
    for name in _REQUIRED:
        if name not in record:
            raise DataError(f"{source}: missing required field {name!r}")
    question = text_cell(record.get("question"), "question", source)
    if question is None:
        raise DataError(f"{source}: empty question")
    options = _options(record, source)
    gold = _gold(record, options, source)
    fields: dict[str, Any] = {"question": question, "options": options}
    explanation = text_cell(record.get("explanation"), "explanation", source)
    if explanation is not None:
        fields["explanation"] = explanation
    return Example(id=row_id(record, "id", source, default_id), fields=fields, gold=gold, source=source)


def _options(record: dict[str, Any], source: str) -> dict[str, str]:
    """{'A': text, ...} from a MedQA 'options' object or from opa..ope cells (trailing empty cells = fewer options)."""
    if "options" in record:
        options = _options_object(record["options"], source)
    else:
        cells = [text_cell(record.get(c), c, source) for c in _OPTION_COLUMNS]
        while cells and cells[-1] is None:
            cells.pop()
        for column, cell in zip(_OPTION_COLUMNS, cells):
            if cell is None:
                raise DataError(f"{source}: option {column!r} is empty but a later option is not")
        options = dict(zip(_LETTERS, [c for c in cells if c is not None]))
    if len(options) < 2:
        raise DataError(f"{source}: {len(options)} option(s); at least 2 are required (opa, opb, ... or 'options')")
    return options


def _options_object(value: Any, source: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise DataError(f"{source}: 'options' must be an object {{\"A\": text, ...}}, got {kind_name(value)}")
    letters = sorted(value)
    if letters != list(_LETTERS[: len(letters)]):
        shown = ", ".join(show(k) for k in letters[:12])
        raise DataError(f"{source}: 'options' keys must be the letters A, B, C, ... in sequence, got {shown}")
    options: dict[str, str] = {}
    for letter in letters:
        text = text_cell(value[letter], f"options.{letter}", source)
        if text is None:
            raise DataError(f"{source}: option {letter!r} is empty")
        options[letter] = text
    return options


def _gold(record: dict[str, Any], options: dict[str, str], source: str) -> str:
    """The answer letter, checked against the offered options and against 'answer' text when present."""
    offered = ", ".join(options)
    raw = text_cell(record.get("answer_idx"), "answer_idx", source)
    gold = raw.upper() if raw is not None else None
    if gold not in options:
        raise DataError(f"{source}: answer_idx {brief(raw or '', 8)} is not one of the offered options {offered}")
    answer = text_cell(record.get("answer"), "answer", source)
    if answer is not None and answer != options[gold]:
        raise DataError(
            f"{source}: answer {brief(answer)} does not match the text of option {gold} (answer_idx {gold})"
        )
    return gold
