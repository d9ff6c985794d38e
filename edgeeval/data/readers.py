"""Reading data files into rows: CSV, JSON, JSON lines, XLSX; every error names file and line."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeeval.errors import DataError
from edgeeval.files import read_bytes

Row = tuple[str, dict[str, Any]]
"""(source, record): where the row came from ('file:line' / 'file:row K') and its raw key -> value mapping."""

TABLE_EXTENSIONS = (".csv", ".json", ".jsonl")


# --- files -----------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """The file's text, refusing missing/unreadable files, NUL bytes, non-UTF-8 bytes and empty files."""
    data = read_bytes(path, DataError, "data file")
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


def read_json(path: Path) -> Any:
    """The file's one JSON document (formats whose file is a single object keyed by item)."""
    return parse_json(read_text(path), path, None)


def table_rows(path: Path, expected: str, required: tuple[str, ...] = (),
               extensions: tuple[str, ...] = TABLE_EXTENSIONS) -> list[Row]:
    """Rows of a .csv, .json (a list, JSON lines or pandas columns), .jsonl or .xlsx file; never empty."""
    suffix = path.suffix.lower()
    if suffix not in extensions:
        raise DataError(f"{path}: unsupported extension {path.suffix!r} (expected {expected}; as {', '.join(extensions)})")
    if suffix == ".xlsx":
        rows = xlsx_rows(path, expected)
    elif suffix == ".csv":
        rows = csv_rows(path, read_text(path), required, ", ".join(required) + f" ({expected})")
    elif suffix == ".jsonl":
        rows = jsonl_rows(path, read_text(path))
    else:
        rows = json_rows(path, read_text(path), expected)
    if not rows:
        raise DataError(f"{path}: no data rows (expected {expected})")
    return rows


# --- CSV and XLSX ----------------------------------------------------------------------------------------


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
                header = _header(f"{path}:{line}", cells, required, expected)
            elif len(cells) != len(header):
                raise DataError(f"{path}:{line}: row has {len(cells)} cells but the header has {len(header)}")
            else:
                rows.append((f"{path}:{line}", _record(header, cells)))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    if header is None:
        raise DataError(f"{path}: no header row")
    return rows


def xlsx_rows(path: Path, expected: str) -> list[Row]:
    """Rows of the first worksheet of an Excel workbook; the first non-empty row is the header."""
    import openpyxl  # only the xlsx formats need it

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except Exception as exc:  # noqa: BLE001 - a damaged workbook can fail in zipfile, XML or openpyxl itself
        raise DataError(f"{path}: not a readable .xlsx workbook ({type(exc).__name__}); expected {expected}") from None
    try:
        return _sheet_rows(path, book.worksheets[0].iter_rows(values_only=True))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        # Only the exception's type: its message could quote a cell, and cells may hold patient text.
        raise DataError(f"{path}: damaged .xlsx worksheet ({type(exc).__name__}); expected {expected}") from None
    finally:
        book.close()


def _sheet_rows(path: Path, cells_by_row: Any) -> list[Row]:
    header: list[str] | None = None
    rows: list[Row] = []
    for number, cells in enumerate(cells_by_row, 1):
        if all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in cells):
            continue  # Excel keeps formatted but empty rows; they are not data
        if header is None:
            # No required columns here: the format's loader names a missing one at the first row that lacks it.
            header = _header(f"{path}:row {number}", cells, (), "")
            continue
        rows.append((f"{path}:row {number}", _record(header, cells)))
    return rows


def _header(where: str, cells: Sequence[Any], required: tuple[str, ...], expected: str) -> list[str]:
    """The column names (an empty cell names no column), each at most once, the `required` ones present."""
    header = ["" if cell is None else str(cell).strip() for cell in cells]
    named = [name for name in header if name]
    for name in sorted(set(named)):
        if named.count(name) > 1:
            raise DataError(f"{where}: column {show(name)} appears more than once in the header")
    for name in required:
        if name not in header:
            raise DataError(
                f"{where}: header has no {name!r} column; expected columns {expected}, "
                f"got {', '.join(show(c) for c in named[:12])}"
            )
    return header


def _record(header: list[str], cells: Sequence[Any]) -> dict[str, Any]:
    return {name: cell for name, cell in zip(header, cells) if name}


# --- JSON and JSON lines ---------------------------------------------------------------------------------


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


def json_rows(path: Path, text: str, expected: str) -> list[Row]:
    """A JSON list of objects, pandas' column-oriented {column: {row: value}}, or JSON lines in a .json
    file (MedMCQA and MeDiSumCode ship their JSON lines named .json)."""
    try:
        data = json.loads(text)
    except (RecursionError, ValueError) as exc:
        if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data":
            return jsonl_rows(path, text)
        raise _invalid_json(exc, path, None) from None
    if isinstance(data, list):
        return list_rows(path, data, expected)
    if isinstance(data, dict) and data and all(isinstance(column, dict) for column in data.values()):
        return column_rows(path, data)
    if isinstance(data, dict) and data:
        return [(f"{path}:1", data)]  # one JSON object: a JSON-lines file with a single line
    raise DataError(f"{path}: unrecognised JSON structure (top level is {kind_name(data)}); expected {expected}")


def list_rows(path: Path, items: list[Any], expected: str = "") -> list[Row]:
    """A JSON list of objects, each a row 'file:row N' (N counted from 0); a non-object item is an error
    that names the `expected` layout when one is given."""
    return [(f"{path}:row {i}", _object(f"{path}:row {i}", item, expected)) for i, item in enumerate(items)]


def _object(where: str, value: Any, expected: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        layout = f" ({expected})" if expected else ""
        raise DataError(f"{where}: expected a JSON object, got {kind_name(value)}{layout}")
    return value


def column_rows(path: Path, columns: dict[str, dict[str, Any]]) -> list[Row]:
    """pandas' column-oriented JSON (DataFrame.to_json()) turned into rows 'file:row <key>'; a row that a
    column lacks simply has no such field."""
    keys = list(dict.fromkeys(k for column in columns.values() for k in column))
    return [(f"{path}:row {k}", {c: column[k] for c, column in columns.items() if k in column}) for k in keys]


def parse_json(text: str, path: Path, line: int | None) -> Any:
    """json.loads with every failure (syntax, nesting bombs, over-long integers) as a DataError."""
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as e:
        raise _invalid_json(e, path, line) from None


def _invalid_json(error: RecursionError | ValueError, path: Path, line: int | None) -> DataError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    if isinstance(error, json.JSONDecodeError):
        at = f"{path}:{line}" if line is not None else f"{path}:{error.lineno}"
        return DataError(f"{at}: invalid JSON: {error.msg} (column {error.colno})")
    if isinstance(error, RecursionError):
        return DataError(f"{where}: invalid JSON: nested too deeply")
    # e.g. an integer literal over Python's digit limit
    return DataError(f"{where}: invalid JSON: {one_line(str(error))}")


# --- cells -----------------------------------------------------------------------------------------------


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


def required_text(record: dict[str, Any], keys: tuple[str, ...], source: str, expected: str) -> str:
    """The first of `keys` present in the record, as non-empty text."""
    key = next((k for k in keys if k in record), None)
    if key is None:
        names = " or ".join(repr(k) for k in keys)
        raise DataError(f"{source}: missing field {names} (expected {expected})")
    value = text_cell(record[key], key, source)
    if value is None:
        raise DataError(f"{source}: field {key!r} is empty")
    return value


def optional_text(record: dict[str, Any], keys: tuple[str, ...], source: str) -> str:
    key = next((k for k in keys if k in record), None)
    return (text_cell(record[key], key, source) or "") if key is not None else ""


def row_id(record: dict[str, Any], key: str, source: str, default: str) -> str:
    """The row's own id from column `key`, else `default`; a present but empty id is an error."""
    if key not in record:
        return default
    value = text_cell(record[key], key, source)
    if value is None:
        raise DataError(f"{source}: empty {key!r}")
    return value


# --- error messages --------------------------------------------------------------------------------------


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
