"""Tests for edgeeval.data: the bundled samples, every bad-input error, and fuzzing that only DataError escapes."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeeval.data.example import Example
from edgeeval.data.multiple_choice import load_multiple_choice
from edgeeval.errors import DataError

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "clinical" / "data"
CASE_FILES = ("case_challenges_sample.csv", "case_challenges_sample.json", "case_challenges_sample_records.json")
HEADER = ["id", "question", "opa", "opb", "opc", "opd", "ope", "answer_idx", "answer", "explanation"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def row(qid: str = "q1", question: str = "Q?", options: tuple[str, ...] = ("a", "b", "c", "d"), gold: str = "A",
        answer: str | None = None, explanation: str = "") -> list[str]:
    cells = list(options) + [""] * (5 - len(options))
    if answer is None:
        answer = options["ABCDE".index(gold)] if gold in "ABCDE"[: len(options)] else ""
    return [qid, question, *cells, gold, answer, explanation]


def medqa(question: str = "Q?", gold: str = "A", **extra: Any) -> dict[str, Any]:
    options = {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}
    return {"question": question, "options": options, "answer_idx": gold, **extra}


def load_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_multiple_choice(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def without_source(examples: list[Example]) -> list[dict[str, Any]]:
    return [e.model_dump(exclude={"source"}) for e in examples]


# --- bundled samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_FILES)
def test_bundled_case_challenges_load(name: str) -> None:
    examples = load_multiple_choice(DATA / name)
    assert len(examples) == 36
    assert [e.id for e in examples] == [f"cc-{n:03d}" for n in range(1, 37)]
    for e in examples:
        assert set(e.fields) == {"question", "options", "explanation"}
        assert list(e.fields["options"]) in (list("ABCD"), list("ABCDE"))
        assert e.gold in e.fields["options"]
        assert e.fields["question"] and e.fields["explanation"]
    assert Counter(len(e.fields["options"]) for e in examples) == {4: 18, 5: 18}
    golds = Counter(e.gold for e in examples)
    assert set(golds) == set("ABCDE") and min(golds.values()) >= 6


def test_bundled_case_challenge_files_are_identical_apart_from_source() -> None:
    loaded = [load_multiple_choice(DATA / name) for name in CASE_FILES]
    assert without_source(loaded[0]) == without_source(loaded[1]) == without_source(loaded[2])
    assert loaded[1][0].source == f"{DATA / CASE_FILES[1]}:row 0"
    assert loaded[2][35].source == f"{DATA / CASE_FILES[2]}:row 35"
    assert loaded[0][0].source == f"{DATA / CASE_FILES[0]}:2"


def test_bundled_medqa_sample_loads() -> None:
    path = DATA / "medqa_sample.jsonl"
    examples = load_multiple_choice(path)
    assert len(examples) == 8
    assert [e.id for e in examples] == [f"medqa_sample-{n}" for n in range(1, 9)]
    assert [e.source for e in examples] == [f"{path}:{n}" for n in range(1, 9)]
    for e in examples:
        assert list(e.fields["options"]) == list("ABCDE")
        assert set(e.fields) == {"question", "options"}
    case_questions = {e.fields["question"] for e in load_multiple_choice(DATA / CASE_FILES[0])}
    assert not case_questions & {e.fields["question"] for e in examples}


# --- formats and sources -----------------------------------------------------------------------


def test_csv_source_is_the_line_where_the_record_starts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cc.csv", [row("q1", "line one\nline two\nline three"), row("q2")])
    first, second = load_multiple_choice(path)
    assert first.fields["question"] == "line one\nline two\nline three"
    assert (first.source, second.source) == (f"{path}:2", f"{path}:5")


def test_csv_without_id_column_uses_stem_and_row_number(tmp_path: Path) -> None:
    path = tmp_path / "jama.csv"
    path.write_text("question,opa,opb,opc,opd,answer_idx,answer\n\nQ1,a,b,c,d,B,b\nQ2,a,b,c,d,d,d\n", encoding="utf-8")
    examples = load_multiple_choice(path)
    assert [e.id for e in examples] == ["jama-1", "jama-2"]
    assert [e.gold for e in examples] == ["B", "D"]  # lower-case letters are accepted
    assert [e.source for e in examples] == [f"{path}:3", f"{path}:4"]
    assert "explanation" not in examples[0].fields


def test_csv_empty_ope_means_four_options_and_bom_and_crlf_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "cc.csv"
    text = "id,question,opa,opb,opc,opd,ope,answer_idx\r\nx,Q,a,b,c,d,,C\r\ny,Q,a,b,c,d,e,E\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    four, five = load_multiple_choice(path)
    assert four.fields["options"] == {"A": "a", "B": "b", "C": "c", "D": "d"}
    assert five.fields["options"]["E"] == "e"
    assert (four.id, five.gold) == ("x", "E")


def test_csv_field_size_limit_is_restored_and_huge_fields_load(tmp_path: Path) -> None:
    before = csv.field_size_limit()
    huge = "x" * 2_000_000
    (example,) = load_multiple_choice(write_csv(tmp_path / "big.csv", [row(question=huge)]))
    assert example.fields["question"] == huge
    assert csv.field_size_limit() == before
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"question": huge, "opa": "a", "opb": "b", "answer_idx": "B"}]), encoding="utf-8")
    assert load_multiple_choice(path)[0].fields["question"] == huge


def test_json_column_oriented_with_nulls_and_numbers(tmp_path: Path) -> None:
    columns = {
        "question": {"7": "Q7", "9": "Q9"},
        "opa": {"7": "a", "9": 1}, "opb": {"7": "b", "9": 2.0}, "opc": {"7": "c", "9": 2.5},
        "opd": {"7": "d", "9": None}, "ope": {"7": None, "9": None},
        "answer_idx": {"7": "A", "9": "b"}, "answer": {"7": "a", "9": "2"}, "explanation": {"7": None, "9": "why"},
    }
    path = tmp_path / "cols.json"
    path.write_text(json.dumps(columns), encoding="utf-8")
    q7, q9 = load_multiple_choice(path)
    assert (q7.id, q7.source, q9.source) == ("cols-1", f"{path}:row 7", f"{path}:row 9")
    assert q9.fields == {"question": "Q9", "options": {"A": "1", "B": "2", "C": "2.5"}, "explanation": "why"}
    assert q9.gold == "B"


def test_json_records_accept_medqa_style_options_and_int_ids(tmp_path: Path) -> None:
    path = tmp_path / "recs.json"
    path.write_text(json.dumps([medqa(id=17, answer="c", gold="C"), medqa(id="18")]), encoding="utf-8")
    a, b = load_multiple_choice(path)
    assert (a.id, a.gold, b.id, b.source) == ("17", "C", "18", f"{path}:row 1")


def test_jsonl_ignores_meta_info_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    first, second = json.dumps(medqa(meta_info="step1", answer=" a ")), json.dumps(medqa(gold="E"))
    path.write_text(f"\n{first}\n\n{second}\n")
    a, b = load_multiple_choice(path)
    assert (a.source, b.source, a.id, b.id) == (f"{path}:2", f"{path}:4", "m-1", "m-2")
    assert set(a.fields) == {"question", "options"}


def test_jsonl_question_with_raw_line_separator(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(medqa(question="a\u2028b\u0085c"), ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_multiple_choice(path)[0].fields["question"] == "a\u2028b\u0085c"


# --- errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in load_error(tmp_path / "nope.csv")


def test_unreadable_path(tmp_path: Path) -> None:
    directory = tmp_path / "dir.json"
    directory.mkdir()
    assert "cannot read" in load_error(directory)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello")
    assert ".jsonl" in load_error(path)


@pytest.mark.parametrize("name", ["e.csv", "e.json", "e.jsonl"])
@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert "empty" in load_error(path)


@pytest.mark.parametrize(("name", "content"), [("h.csv", ",".join(HEADER) + "\n\n"), ("l.json", "[]"), ("d.json", "{}"),
                                               ("c.json", '{"question": {}, "answer_idx": {}}')])
def test_no_rows(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert "no data rows" in load_error(path)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n{"question": "Q",\n "opa": }\n]')
    message = load_error(path)
    assert f"{path}:3:" in message and "invalid JSON" in message


def test_invalid_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(medqa()) + "\n{oops\n")
    assert f"{path}:2:" in load_error(path)


def test_json_lines_in_a_json_file_gets_a_hint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", [medqa(), medqa()])
    assert f"{path}:2:" in load_error(path)


@pytest.mark.parametrize(
    "content", ["42", '"text"', "null", '{"question": "Q", "answer_idx": "A"}', '{"a": {"0": 1}, "b": 2}']
)
def test_unknown_json_structure(tmp_path: Path, content: str) -> None:
    path = tmp_path / "odd.json"
    path.write_text(content)
    message = load_error(path)
    assert "list of objects" in message and "column-oriented" in message


def test_column_oriented_without_question_column(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"0": {"question": "Q", "opa": "a", "opb": "b", "answer_idx": "A"}}))
    assert "no 'question' column" in load_error(path)


def test_json_list_item_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text(json.dumps([medqa(), "oops"]))
    assert f"{path}:row 1:" in load_error(path)


def test_jsonl_line_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [medqa(), [1, 2]])
    assert f"{path}:2:" in load_error(path)


def test_csv_header_missing_required_column(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,question,opa,opb,answer\nq,Q,a,b,a\n")
    message = load_error(path)
    assert f"{path}:1:" in message and "'answer_idx'" in message


def test_csv_duplicate_header_column(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("question,opa,opa,opb,answer_idx\nQ,a,b,c,A\n")
    assert "'opa' appears more than once" in load_error(path)


@pytest.mark.parametrize(("record", "key"), [
    ({"opa": "a", "opb": "b", "answer_idx": "A"}, "'question'"),
    ({"question": "Q", "opa": "a", "opb": "b"}, "'answer_idx'"),
])
def test_json_row_missing_required_field(tmp_path: Path, record: dict[str, str], key: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps([medqa(), record]))
    message = load_error(path)
    assert f"{path}:row 1:" in message and "missing required field" in message and key in message


def test_column_oriented_row_missing_from_a_column(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    columns = {"question": {"0": "Q", "1": "Q"}, "opa": {"0": "a", "1": "a"}, "opb": {"0": "b", "1": "b"},
               "answer_idx": {"0": "A"}}
    path.write_text(json.dumps(columns))
    assert f"{path}:row 1: missing required field 'answer_idx'" in load_error(path)


def test_jsonl_row_missing_required_field(tmp_path: Path) -> None:
    record = medqa()
    del record["answer_idx"]
    path = write_jsonl(tmp_path / "m.jsonl", [medqa(), medqa(), record])
    assert f"{path}:3: missing required field 'answer_idx'" in load_error(path)


@pytest.mark.parametrize("question", ["", "   \n  "])
def test_empty_question_csv(tmp_path: Path, question: str) -> None:
    path = write_csv(tmp_path / "q.csv", [row("q1"), row("q2", question)])
    assert f"{path}:3: empty question" in load_error(path)


def test_empty_question_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [medqa(question=None)])
    assert f"{path}:1: empty question" in load_error(path)


def test_question_of_wrong_type(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [medqa(question=["a", "list"])])
    assert "'question' must be text" in load_error(path)


def test_fewer_than_two_options_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "o.csv", [row(options=("only",))])
    message = load_error(path)
    assert f"{path}:2:" in message and "at least 2" in message


def test_fewer_than_two_options_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "o.jsonl", [{"question": "Q", "options": {"A": "a"}, "answer_idx": "A"}])
    assert "at least 2" in load_error(path)


def test_no_options_at_all_json(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    path.write_text(json.dumps([{"question": "Q", "answer_idx": "A"}]))
    assert f"{path}:row 0:" in load_error(path)


def test_gap_in_option_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "g.csv", [row(options=("a", "b", "", "d"))])
    assert "option 'opc' is empty" in load_error(path)


@pytest.mark.parametrize(("options", "expected"), [
    (["a", "b"], "must be an object"),
    ({"A": "a", "C": "c"}, "letters A, B, C"),
    ({"a": "x", "b": "y"}, "letters A, B, C"),
    ({"A": "a", "B": ""}, "option 'B' is empty"),
    ({"A": "a", "B": {"nested": 1}}, "'options.B' must be text"),
])
def test_bad_medqa_options(tmp_path: Path, options: Any, expected: str) -> None:
    path = write_jsonl(tmp_path / "o.jsonl", [{"question": "Q", "options": options, "answer_idx": "A"}])
    message = load_error(path)
    assert f"{path}:1:" in message and expected in message


@pytest.mark.parametrize(("gold", "shown"), [("E", "'E'"), ("Z", "'Z'"), ("", "''"), ("AB", "'AB'"), ("1", "'1'")])
def test_answer_idx_not_an_offered_letter_csv(tmp_path: Path, gold: str, shown: str) -> None:
    path = write_csv(tmp_path / "a.csv", [row(gold=gold, answer="")])
    message = load_error(path)
    assert f"{path}:2:" in message and shown in message and "offered options A, B, C, D" in message


def test_answer_idx_not_an_offered_letter_jsonl(tmp_path: Path) -> None:
    record = {"question": "Q", "options": {"A": "a", "B": "b", "C": "c"}, "answer_idx": "D"}
    path = write_jsonl(tmp_path / "a.jsonl", [record])
    assert "offered options A, B, C" in load_error(path)


def test_answer_idx_as_number_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [medqa(gold=2)])
    assert "answer_idx '2'" in load_error(path)


def test_answer_text_mismatch(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [row(), row("q2", gold="B", answer="a")])
    message = load_error(path)
    assert f"{path}:3:" in message and "does not match the text of option B" in message


def test_answer_text_mismatch_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [medqa(gold="B", answer="a")])
    assert f"{path}:1: answer 'a' does not match the text of option B" in load_error(path)


def test_answer_text_matches_after_strip(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [row(options=(" a ", "b", "c", "d"), answer="a  ")])
    assert load_multiple_choice(path)[0].gold == "A"


def test_duplicated_ids_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [row("q1"), row("q2"), row("q1")])
    message = load_error(path)
    assert f"{path}:4: duplicated id 'q1'" in message and f"{path}:2" in message


def test_duplicated_ids_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [medqa(id="d-2"), medqa()])  # generated id of row 2 is d-2
    assert f"{path}:2: duplicated id 'd-2'" in load_error(path)


def test_empty_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "i.csv", [row("q1"), row("")])
    assert f"{path}:3: empty 'id'" in load_error(path)


def test_ragged_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("question,opa,opb,answer_idx\nQ,a,b,A\nQ,a,b,A,extra\n")
    assert f"{path}:3: row has 5 cells but the header has 4" in load_error(path)
    path.write_text('question,opa,opb,answer_idx\n"multi\nline",a,b,A\nQ,a,b\n')
    assert f"{path}:4: row has 3 cells" in load_error(path)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("question,opa,opb,answer_idx\nCaf\u00e9?,a,b,A\n".encode("latin-1"))
    message = load_error(path)
    assert "not UTF-8" in message and "byte offset 31" in message and f"{path}:2:" in message


@pytest.mark.parametrize("name", ["n.csv", "n.json", "n.jsonl"])
def test_nul_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b'{"question": "Q"}\n{"a\x00": 1}\n')
    message = load_error(path)
    assert "NUL byte at byte offset 21" in message and f"{path}:2:" in message


def test_utf16_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "u16.csv"
    path.write_text("question,opa,opb,answer_idx\nQ,a,b,A\n", encoding="utf-16")
    assert "NUL byte" in load_error(path)


@pytest.mark.parametrize("name", ["bomb.json", "bomb.jsonl"])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_json_nesting_bomb(tmp_path: Path, name: str, opener: str) -> None:
    path = tmp_path / name
    path.write_text(opener * 200_000)
    assert "invalid JSON" in load_error(path)


def test_integer_over_digit_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"question": ' + "9" * 5000 + "}\n")
    assert f"{path}:1: invalid JSON" in load_error(path)


def test_unpaired_surrogate_escape(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"question": "bad \\ud800 text", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n')
    assert "unpaired surrogate" in load_error(path)


# --- properties --------------------------------------------------------------------------------


def check_loads_or_data_error(path: Path) -> None:
    """The contract: a list of consistent Examples, or a one-line DataError naming the file."""
    try:
        examples = load_multiple_choice(path)
    except DataError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert examples
    assert len({e.id for e in examples}) == len(examples)
    for e in examples:
        options = e.fields["options"]
        assert e.gold in options and len(options) >= 2
        assert all(isinstance(t, str) and t for t in options.values())
        assert isinstance(e.fields["question"], str) and e.fields["question"]


SUFFIXES = st.sampled_from([".csv", ".json", ".jsonl"])


@FUZZ
@given(text=st.text(), suffix=SUFFIXES)
def test_arbitrary_text_only_raises_data_error(tmp_path: Path, text: str, suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_text(text, encoding="utf-8")
    check_loads_or_data_error(path)


@FUZZ
@given(data=st.binary(), suffix=SUFFIXES)
def test_arbitrary_bytes_only_raise_data_error(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    check_loads_or_data_error(path)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from('ABCDEabcde ,"\n\r[]{}:0123456789.-\\question_idxopnaswr'), max_size=200),
       suffix=SUFFIXES)
def test_syntax_heavy_text_only_raises_data_error(tmp_path: Path, text: str, suffix: str) -> None:
    header = "question,opa,opb,opc,answer_idx,answer\n" if suffix == ".csv" else ""
    path = tmp_path / f"fuzz{suffix}"
    path.write_text(header + text, encoding="utf-8")
    check_loads_or_data_error(path)


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                         st.sampled_from(["A", "b", " C ", "E", "", "a"]))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
KEYS = [*HEADER, "options", "meta_info"]
OPTIONS_OBJECTS = st.dictionaries(st.sampled_from(list("ABCDEa") + ["AB", ""]), JSON_SCALARS, max_size=6)
RANDOM_RECORDS = st.dictionaries(st.sampled_from(KEYS), JSON_SCALARS | JSON_VALUES | OPTIONS_OBJECTS, max_size=12)
VALID_RECORDS = st.sampled_from([
    {"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "ope": None, "answer_idx": "C", "answer": "c"},
    {**medqa(gold="E"), "meta_info": "step1"},
])


@st.composite
def near_valid_records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid row with a few keys dropped or replaced, so that fuzzing reaches the row checks and sometimes loads."""
    record = dict(draw(VALID_RECORDS))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=2)):
        record.pop(key, None)
    record.update(draw(st.dictionaries(st.sampled_from(KEYS), JSON_SCALARS | OPTIONS_OBJECTS, max_size=2)))
    return record


RECORDS = near_valid_records() | VALID_RECORDS | RANDOM_RECORDS


@FUZZ
@given(records=st.lists(RECORDS | JSON_VALUES, max_size=5), layout=st.sampled_from(["jsonl", "records", "columns"]))
def test_structured_json_records_only_raise_data_error(tmp_path: Path, records: list[Any], layout: str) -> None:
    if layout == "jsonl":
        path = tmp_path / "fuzz.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif layout == "records":
        path = tmp_path / "fuzz.json"
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        dicts = [r for r in records if isinstance(r, dict)]
        columns = {k: {str(i): r[k] for i, r in enumerate(dicts) if k in r} for k in KEYS if any(k in r for r in dicts)}
        path = tmp_path / "fuzz.json"
        path.write_text(json.dumps(columns), encoding="utf-8")
    check_loads_or_data_error(path)


CELLS = st.text(max_size=6) | st.sampled_from(["A", "b", "E", " d ", "", "x"])


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    """The real header or a random one; rows mostly as wide as the header (so row checks are reached), some ragged."""
    header = draw(st.just(HEADER) | st.lists(st.sampled_from(HEADER + ["", "extra"]), min_size=1, max_size=12))
    width = st.just(len(header)) | st.integers(0, 12)
    random_rows = width.flatmap(lambda n: st.lists(CELLS, min_size=n, max_size=n))
    rows = draw(st.lists(near_valid_csv_rows(len(header)) | random_rows, max_size=5))
    return header, rows


@st.composite
def near_valid_csv_rows(draw: st.DrawFn, width: int) -> list[str]:
    """A valid HEADER row (unique id) with up to two cells replaced, cut or padded to the header width."""
    options = draw(st.sampled_from([("a", "b", "c", "d"), ("a", "b", "c", "d", "e")]))
    cells = row(f"q{draw(st.integers(0, 10**6))}", options=options, gold=draw(st.sampled_from("ABCD")))
    for index, cell in draw(st.lists(st.tuples(st.integers(0, len(cells) - 1), CELLS), max_size=2)):
        cells[index] = cell
    return (cells + [""] * width)[:width]


@FUZZ
@given(table=csv_tables())
def test_structured_csv_only_raises_data_error(tmp_path: Path, table: tuple[list[str], list[list[str]]]) -> None:
    header, rows = table
    path = tmp_path / "fuzz.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue().replace("\x00", ""), encoding="utf-8")
    check_loads_or_data_error(path)


QUESTION_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
).filter(lambda t: t.strip() != "")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=QUESTION_TEXT)
def test_unicode_question_round_trips_through_csv_and_json(tmp_path: Path, question: str) -> None:
    options = ("caf\u00e9", "\u00fcber", "\u6f22\u5b57", "\U0001f489")
    csv_path = write_csv(tmp_path / "rt.csv", [row("u1", question, options, "D")])
    records = [{"id": "u1", "question": question, "opa": options[0], "opb": options[1], "opc": options[2],
                "opd": options[3], "answer_idx": "D", "answer": options[3]}]
    records_path = tmp_path / "rt_records.json"
    records_path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    columns_path = tmp_path / "rt_columns.json"
    columns_path.write_text(json.dumps({k: {"0": v} for k, v in records[0].items()}), encoding="utf-8")
    jsonl_path = write_jsonl(tmp_path / "rt.jsonl", [{"id": "u1", "question": question, "answer_idx": "D",
                                                      "options": dict(zip("ABCD", options))}])
    loaded = [load_multiple_choice(p) for p in (csv_path, records_path, columns_path, jsonl_path)]
    for (example,) in loaded:
        assert example.fields["question"] == question.strip()
        assert example.fields["options"] == dict(zip("ABCD", options))
        assert example.gold == "D"
    assert len({json.dumps(without_source(examples)) for examples in loaded}) == 1
