"""Data loaders: real benchmark file formats in, validated `Example`s out (never silently dropping a row)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgeeval.errors import DataError


class Example(BaseModel):
    """One evaluation item, as read from a data file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    """Stable identifier: the file's own id column when it has one, else '<file stem>-<row number>'."""
    fields: dict[str, Any]
    """Variables the prompt template sees. Multiple choice: 'question' (str) and 'options' ({'A': text, ...});
    the other formats' fields are listed in edgeeval.formats."""
    gold: str
    """The correct answer: the option letter (multiple choice, LongHealth); the label (MedNLI, PubMedQA); the
    reference text (summaries, MeDiSumQA); the ICD-10-CM codes joined by ';' (MeDiSumCode); for LongHealth
    task 3, the letter of the 'cannot be answered' option."""
    source: str
    """Where the item came from, 'file:line' (or 'file:row N'), for error messages."""


# --- multiple choice -------------------------------------------------------------------------

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


Row = tuple[str, dict[str, Any]]
"""(source, record): where the row came from ('file:line' / 'file:row K') and its raw key -> value mapping."""


def read_text(path: Path) -> str:
    """The file's text, refusing missing/unreadable files, NUL bytes, non-UTF-8 bytes and empty files."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read data file: {e.strerror or e}") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{path}:{line}: NUL byte at byte offset {nul}; data files must be UTF-8 text (not UTF-16)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: file is not UTF-8 (invalid byte 0x{data[e.start]:02x} at byte offset {e.start}); "
            "re-save it as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _load_csv(path: Path, text: str) -> list[Row]:
    return csv_rows(path, text, _REQUIRED, _CSV_COLUMNS)


def csv_rows(path: Path, text: str, required: tuple[str, ...] = (), expected: str = "") -> list[Row]:
    """Rows of a CSV with a header line (which must name the `required` columns; `expected` describes
    the format for the error); blank lines are skipped, ragged rows are errors."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # huge fields (long vignettes, whole discharge summaries) are fine
    try:
        return _csv_rows(path, csv.reader(io.StringIO(text, newline="")), required, expected)
    finally:
        csv.field_size_limit(old_limit)


def _csv_rows(path: Path, reader: Any, required: tuple[str, ...], expected: str) -> list[Row]:
    header: list[str] | None = None
    rows: list[Row] = []
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if header is None:
                header = _csv_header(path, line, cells, required, expected)
            elif len(cells) != len(header):
                raise DataError(f"{path}:{line}: row has {len(cells)} cells but the header has {len(header)}")
            else:
                rows.append((f"{path}:{line}", {k: v for k, v in zip(header, cells) if k}))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    if header is None:
        raise DataError(f"{path}: no header row")
    return rows


def _csv_header(path: Path, line: int, cells: list[str], required: tuple[str, ...], expected: str) -> list[str]:
    header = [c.strip() for c in cells]
    named = [c for c in header if c]
    for name in sorted(set(named)):
        if named.count(name) > 1:
            raise DataError(f"{path}:{line}: column {show(name)} appears more than once in the header")
    for name in required:
        if name not in header:
            raise DataError(
                f"{path}:{line}: header has no {name!r} column; expected columns {expected}, "
                f"got {', '.join(show(c) for c in named[:12])}"
            )
    return header


def jsonl_rows(path: Path, text: str) -> list[Row]:
    """One JSON object per non-blank line (split on '\\n' only: JSON strings may hold raw U+2028)."""
    rows: list[Row] = []
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        record = parse_json(raw, path, line)
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line}: expected a JSON object per line, got {kind_name(record)}")
        rows.append((f"{path}:{line}", record))
    return rows


def _load_json(path: Path, text: str) -> list[Row]:
    """A list of objects, or pandas' column-oriented {column: {row key: value}}."""
    data = parse_json(text, path, None)
    if isinstance(data, list):
        return [(f"{path}:row {i}", _record(path, i, r)) for i, r in enumerate(data)]
    if isinstance(data, dict) and all(isinstance(col, dict) for col in data.values()):
        return _columns_to_rows(path, data)
    hint = " (for JSON Lines name the file .jsonl)" if isinstance(data, dict) and "question" in data else ""
    raise DataError(f"{path}: unrecognised JSON structure (top level is {kind_name(data)}); expected {_JSON_LAYOUTS}{hint}")


def _record(path: Path, index: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{path}:row {index}: expected a JSON object, got {kind_name(value)}")
    return value


def _columns_to_rows(path: Path, columns: dict[str, dict[str, Any]]) -> list[Row]:
    if columns and "question" not in columns:
        names = ", ".join(show(c) for c in list(columns)[:12])
        raise DataError(
            f"{path}: column-oriented JSON has no 'question' column (columns: {names}); expected {_JSON_LAYOUTS}"
        )
    keys = list(dict.fromkeys(k for col in columns.values() for k in col))
    return [(f"{path}:row {k}", {c: col[k] for c, col in columns.items() if k in col}) for k in keys]


def parse_json(text: str, path: Path, line: int | None) -> Any:
    """json.loads with every failure (syntax, nesting bombs, over-long integers) as a DataError."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"{path}:{line}" if line is not None else f"{path}:{e.lineno}"
        raise DataError(f"{at}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal over Python's digit limit
        raise DataError(f"{where}: invalid JSON: {one_line(str(e))}") from None


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
    return Example(id=_id(record, source, default_id), fields=fields, gold=gold, source=source)


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


def _id(record: dict[str, Any], source: str, default_id: str) -> str:
    if "id" not in record:
        return default_id
    value = text_cell(record["id"], "id", source)
    if value is None:
        raise DataError(f"{source}: empty 'id'")
    return value


def check_unique_ids(path: Path, examples: list[Example]) -> None:
    seen: dict[str, str] = {}
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{ex.source}: duplicated id {show(ex.id)} (first at {seen[ex.id]})")
        seen[ex.id] = ex.source


def text_cell(value: Any, key: str, source: str) -> str | None:
    """A cell as stripped text; None for null / empty / NaN. Numbers are accepted (pandas may write them)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{source}: field {key!r} must be text, got {kind_name(value)}")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{source}: field {key!r} contains an unpaired surrogate (\\ud800-\\udfff escape)") from None
    return text or None


def kind_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def brief(value: Any, limit: int = 24) -> str:
    """A cell quoted for an error message when it is short enough to be a label, a number or a code; a
    longer one may be patient text that slipped into the wrong column, so it is described, not shown."""
    text = str(value)
    return show(text) if len(text) <= limit and "\n" not in text else f"a {len(text)}-character text (not shown)"


def show(value: str, limit: int = 60) -> str:
    """A value quoted for a one-line message (repr escapes newlines), truncated."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def one_line(message: str) -> str:
    return " ".join(message.split())
