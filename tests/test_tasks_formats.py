"""The real-format loaders (edgeeval.data.formats, edgeeval.data.longhealth): the bundled samples, each format's
errors (naming the expected format and the offending line or key), and fuzzing that only DataError escapes."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeeval.config.tasks import TaskSpec, load_task
from edgeeval.data.formats import FORMATS, DataSpec, load_examples
from edgeeval.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "clinical" / "data"
TASKS = ROOT / "benchmarks" / "clinical"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Nested JSON is slow to generate; 30 structures per format still reach every loader's error paths.
FUZZ_STRUCTURES = settings(FUZZ, max_examples=30)
UNANSWERABLE = "Question cannot be answered with provided documents"


@cache
def spec(task: str) -> TaskSpec:
    return load_task(TASKS / f"{task}.toml")


def load(task: str, path: Path) -> list:
    return load_examples(path, spec(task).data, spec(task).labels)


def load_error(task: str, path: Path) -> str:
    with pytest.raises(DataError) as info:
        load(task, path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- bundled samples ---------------------------------------------------------------------------------------


def test_medmcqa_sample_uses_one_based_cop() -> None:
    examples = load("medmcqa", DATA / "medmcqa_sample.json")
    assert len(examples) == 10 and examples[0].id == "mm-sample-01"
    first = examples[0]
    assert first.gold == "B" and first.fields["options"]["B"] == "Thiamine"  # cop 2 = opb
    assert set(first.fields) == {"question", "options", "explanation", "subject", "topic"}
    assert {e.gold for e in examples} == set("ABCD")


def test_pubmedqa_sample() -> None:
    examples = load("pubmedqa", DATA / "pubmedqa_sample.json")
    assert len(examples) == 10 and examples[0].id == "90000001"
    assert {e.gold for e in examples} == {"yes", "no", "maybe"}
    first = examples[0]
    assert len(first.fields["contexts"]) == len(first.fields["context_labels"]) == 3
    assert "LONG_ANSWER" not in json.dumps(first.fields)  # the conclusion is never shown


def test_mednli_sample_and_shots() -> None:
    examples = load("mednli", DATA / "mednli_sample.jsonl")
    assert len(examples) == 12 and {e.gold for e in examples} == {"entailment", "contradiction", "neutral"}
    # The task's labels come along in order, for a template that lists them (--permute rotates that order).
    assert set(examples[0].fields) == {"sentence1", "sentence2", "labels"}
    assert examples[0].fields["labels"] == ["entailment", "contradiction", "neutral"]
    shots = load("mednli", DATA / "mednli_fewshot.jsonl")
    assert [s.gold for s in shots] == ["entailment", "contradiction", "neutral"]


def test_meqsum_xlsx_sample_and_the_same_rows_as_csv_and_jsonl(tmp_path: Path) -> None:
    examples = load("meqsum", DATA / "meqsum_sample.xlsx")
    assert len(examples) == 10 and examples[0].id == "sample-001.txt"
    assert examples[0].fields["question"].startswith("SUBJECT: blood pressure pills")
    assert examples[0].gold == "Does grapefruit interact with amlodipine?"
    rows = [[e.id, e.fields["question"], e.gold] for e in examples]
    as_csv = load("meqsum", write_csv(tmp_path / "m.csv", ["File", "CHQ", "Summary"], rows))
    as_jsonl = load("meqsum", write_jsonl(tmp_path / "m.jsonl", [dict(zip(["File", "CHQ", "Summary"], r)) for r in rows]))
    strip = [(e.id, e.fields, e.gold) for e in examples]
    assert [(e.id, e.fields, e.gold) for e in as_csv] == strip == [(e.id, e.fields, e.gold) for e in as_jsonl]


def test_problem_summary_reads_test_and_training_column_names() -> None:
    examples = load("problem_summary", DATA / "problem_summary_sample.csv")
    assert len(examples) == 10 and examples[0].id == "ps-001"
    assert examples[0].fields["problems"] == ["Community acquired pneumonia", "Sepsis",
                                              "Acute on chronic hypoxemic respiratory failure", "COPD"]
    shots = load("problem_summary", DATA / "problem_summary_fewshot.csv")  # 'Subjective Sections' header
    assert shots[0].fields["subjective"] == "Pt says leg less painful. Afebrile overnight."


def test_medisumqa_ids_count_questions_per_note() -> None:
    examples = load("medisumqa", DATA / "medisumqa_sample.jsonl")
    assert [e.id for e in examples[:4]] == ["DS-1001-1", "DS-1001-2", "DS-1001-3", "DS-1002-1"]
    assert examples[0].fields["discharge_summary"].startswith("Name: ___")


def test_medisumcode_sample_codes_are_normalised_and_valid() -> None:
    from edgeeval.kinds.icd_coding import is_valid

    examples = load("medisumcode", DATA / "medisumcode_sample.jsonl")
    assert len(examples) == 8
    first = examples[0]
    assert first.gold == "I5023;E1122;N183" and first.fields["codes"] == ["I5023", "E1122", "N183"]
    assert first.fields["descriptions"][0] == "Acute on chronic systolic (congestive) heart failure"
    assert all(is_valid(code) for e in examples for code in e.fields["codes"])


def test_longhealth_tasks_share_questions_but_not_documents() -> None:
    t1, t2, t3 = (load(f"longhealth_t{n}", DATA / "longhealth_sample.json") for n in (1, 2, 3))
    assert [e.id for e in t1] == [e.id for e in t2] == [e.id for e in t3]
    assert len(t1) == 10 and t1[0].id == "patient_01-q1" and t1[0].gold == "B"
    assert list(t1[0].fields["options"]) == list("ABCDE")
    assert t2[0].fields["options"]["F"] == UNANSWERABLE and t2[0].gold == "B"
    assert t3[0].gold == "F"
    keller = "Jonas Keller"
    assert all(keller in d["text"] for d in t1[0].fields["documents"])
    assert any(keller not in d["text"] for d in t2[0].fields["documents"])
    assert all(keller not in d["text"] for d in t3[0].fields["documents"])
    answer_doc = next(d for d in t2[0].fields["documents"] if d["rank"] == 0)
    assert "left neck and the right groin" in answer_doc["text"]


def test_longhealth_documents_are_deterministic() -> None:
    first = load("longhealth_t2", DATA / "longhealth_sample.json")
    again = load("longhealth_t2", DATA / "longhealth_sample.json")
    assert [e.fields for e in first] == [e.fields for e in again]
    assert len({tuple(d["rank"] for d in e.fields["documents"]) for e in first}) > 1  # orders vary by question


# --- errors, per format ------------------------------------------------------------------------------------


def mcqa(**extra: Any) -> dict[str, Any]:
    return {"id": "m1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1, **extra}


@pytest.mark.parametrize(
    "rows, message",
    [
        ([mcqa(cop=0)], "answer_index_base = 0"),
        ([mcqa(cop=5)], "outside 1-4"),
        ([mcqa(cop=-1)], "no answer"),
        ([{k: v for k, v in mcqa().items() if k != "cop"}], "no answer"),
        ([mcqa(cop="B")], "correct option's number"),
        ([{k: v for k, v in mcqa().items() if k != "opd"}], "'opd' (expected MedMCQA"),
        ([mcqa(), mcqa()], "duplicated id 'm1'"),
    ],
)
def test_medmcqa_errors(tmp_path: Path, rows: list, message: str) -> None:
    path = write_jsonl(tmp_path / "dev.json", rows)
    assert message in load_error("medmcqa", path)


def test_medmcqa_zero_based_export(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [mcqa(cop=0), mcqa(id="m2", cop=3)])
    data = DataSpec(path="x", format="medmcqa", answer_index_base=0)
    assert [e.gold for e in FORMATS["medmcqa"].load(path, data)] == ["A", "D"]


def test_wrong_format_names_the_expected_one_and_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mli.jsonl", [{"sentence1": "a", "sentence2": "b", "gold_label": "neutral"},
                                                {"question": "Q?", "options": {"A": "x"}, "answer_idx": "A"}])
    message = load_error("mednli", path)
    assert f"{path}:2:" in message and "MedNLI" in message and "sentence1" in message


@pytest.mark.parametrize("task, name", [("mednli", "e.jsonl"), ("meqsum", "e.csv"), ("pubmedqa", "e.json"),
                                        ("longhealth_t1", "e.json"), ("medisumcode", "e.jsonl")])
def test_empty_file(tmp_path: Path, task: str, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n \n")
    assert "empty" in load_error(task, path)


def test_empty_xlsx_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "e.xlsx"
    openpyxl.Workbook().save(path)
    assert "no data rows" in load_error("meqsum", path)


def test_xlsx_errors_name_the_row(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    book.active.append(["File", "CHQ", "Summary"])
    book.active.append(["a.txt", "Is it safe?", "Is it safe?"])
    book.active.append([None, None, None])  # an empty row is not data
    book.active.append(["b.txt", "What dose?", None])
    path = tmp_path / "m.xlsx"
    book.save(path)
    assert f"{path}:row 4: field 'Summary' is empty" in load_error("meqsum", path)


def test_garbage_xlsx(tmp_path: Path) -> None:
    path = tmp_path / "m.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    assert "not a readable .xlsx workbook" in load_error("meqsum", path)


def test_meqsum_duplicated_file_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ["File", "CHQ", "Summary"], [["a", "q1", "s1"], ["a", "q2", "s2"]])
    assert "duplicated id 'a'" in load_error("meqsum", path)


def test_meqsum_csv_without_summary_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ["File", "CHQ"], [["a", "q1"]])
    message = load_error("meqsum", path)
    assert f"{path}:1:" in message and "'Summary'" in message and "MeQSum" in message


def test_problem_summary_empty_summary_is_an_error(tmp_path: Path) -> None:
    header = ["File ID", "Assessment", "Subjective Sections", "Objective Sections", "Summary"]
    path = write_csv(tmp_path / "train.csv", header, [["1", "A", "S", "O", "x; y"], ["2", "A", "S", "O", ""]])
    assert f"{path}:3: field 'Summary' is empty" in load_error("problem_summary", path)


def test_medisumqa_repeated_question_is_an_error(tmp_path: Path) -> None:
    row = {"note_id": "n1", "without_discharge_summary": "text", "Question": "Why?", "Answer": "Because."}
    path = write_jsonl(tmp_path / "qa.jsonl", [row, row])
    assert f"{path}:2: duplicated question for note 'n1' (first at {path}:1)" in load_error("medisumqa", path)


def test_medisumqa_accepts_a_json_list(tmp_path: Path) -> None:
    path = tmp_path / "MeDiSumQA.json"
    path.write_text(json.dumps([{"note_id": "n1", "without_discharge_summary": "text", "Question": "Why?",
                                 "Answer": "So."}]))
    (example,) = load("medisumqa", path)
    assert (example.id, example.fields["discharge_summary"]) == ("n1-1", "text")


LETTER = "Hospital Course: Diuresed with furosemide.\nDischarge Instructions: Weigh yourself every morning."
INSTRUCTIONS_ROW = {"note_id": "n1", "with_discharge_summary": LETTER,
                    "without_discharge_summary": LETTER.split("\nDischarge Instructions")[0],
                    "Question": "What should I do every morning?", "Answer": "Weigh yourself every morning."}


def test_medisumqa_reads_the_letter_without_its_discharge_instructions(tmp_path: Path) -> None:
    """As CLUE does: the answers were written from the instructions, so they must not be in the prompt."""
    (example,) = load("medisumqa", write_jsonl(tmp_path / "qa.jsonl", [INSTRUCTIONS_ROW]))
    assert example.fields["discharge_summary"] == "Hospital Course: Diuresed with furosemide."
    assert "Weigh yourself" not in example.fields["discharge_summary"]


def test_medisumqa_without_the_clue_letter_is_refused_in_one_line(tmp_path: Path) -> None:
    row = {k: v for k, v in INSTRUCTIONS_ROW.items() if k != "without_discharge_summary"}
    path = write_jsonl(tmp_path / "qa.jsonl", [row])
    message = load_error("medisumqa", path)
    assert message.startswith(f"{path}:1: no field 'without_discharge_summary'") and "letter_field" in message
    assert "\n" not in message


def test_medisumqa_reads_another_letter_field_when_the_task_names_it(tmp_path: Path) -> None:
    row = {k: v for k, v in INSTRUCTIONS_ROW.items() if k != "without_discharge_summary"}
    data = spec("medisumqa").data.model_copy(update={"letter_field": "with_discharge_summary"})
    (example,) = load_examples(write_jsonl(tmp_path / "qa.jsonl", [row]), data)
    assert example.fields["discharge_summary"] == LETTER


@pytest.mark.parametrize(
    "codes, message",
    [([], "non-empty list"), ("I10", "non-empty list"), ([{"code": "not a code"}], "not an ICD-10 code"),
     ([{"code": None}], "not an ICD-10 code"), ([{"code": ["I10"]}], "must be text")],
)
def test_medisumcode_bad_codes(tmp_path: Path, codes: Any, message: str) -> None:
    path = write_jsonl(tmp_path / "c.json", [{"hadm_id": "1", "text": "t", "icd_codes": codes}])
    assert message in load_error("medisumcode", path)


def test_medisumcode_normalises_and_keeps_a_repeated_code_as_clue_does(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"hadm_id": 7, "text": "t",
                                               "icd_codes": ["e11.9", {"code": "E119"}, {"code": "I10", "description": "HTN"}]}])
    (example,) = load("medisumcode", path)
    assert (example.id, example.gold, example.fields["descriptions"]) == ("7", "E119;E119;I10", ["", "", "HTN"])


def pqal(**changes: Any) -> dict[str, Any]:
    item = {"QUESTION": "Does it work?", "CONTEXTS": ["Background.", "Results."], "LABELS": ["B", "R"],
            "final_decision": "yes"}
    return {"1": {**item, **changes}}


@pytest.mark.parametrize(
    "data, message",
    [([pqal()], "top level is a list"), (pqal(final_decision="perhaps"), "label 'perhaps' is not one of"),
     (pqal(CONTEXTS=[]), "'CONTEXTS' must be a non-empty list"), (pqal(LABELS=["B"]), "1 LABELS for 2 CONTEXTS"),
     ({"1": "yes"}, "expected an object"), ({}, "no data rows")],
)
def test_pubmedqa_errors(tmp_path: Path, data: Any, message: str) -> None:
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(data))
    assert message in load_error("pubmedqa", path)


def test_pubmedqa_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps({**pqal(), "2": {"QUESTION": "Q", "CONTEXTS": ["c"]}}))
    assert "key '2': missing field 'final_decision'" in load_error("pubmedqa", path)


def patient(**question_changes: Any) -> dict[str, Any]:
    question = {"No": 1, "question": "Which drug?", "answer_a": "Aspirin", "answer_b": "Heparin",
                "answer_c": "Warfarin", "answer_d": "Apixaban", "answer_e": "None", "correct": "Heparin",
                "answer_location": {"text_0": {"start": [0.1], "end": [0.2]}}, **question_changes}
    return {"texts": {"text_0": "He got heparin.", "text_1": "Discharged home."}, "questions": [question]}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"p1": patient(correct="Insulin")}, "'Insulin' matches no option"),
        ({"p1": patient(correct="a")}, "matches options"),
        ({"p1": patient(answer_location={"text_9": {}})}, "'text_9', which is not one of the patient's texts"),
        ({"p1": {"texts": {}, "questions": []}}, "'texts' must be a non-empty object"),
        ({"p1": patient(answer_e=None)}, "field 'answer_e' is empty"),
        ([patient()], "expected LongHealth"),
        ({"p1": {**patient(), "questions": [patient()["questions"][0]] * 2}}, "duplicated id 'p1-q1'"),
    ],
)
def test_longhealth_errors(tmp_path: Path, data: Any, message: str) -> None:
    path = tmp_path / "benchmark_v5.json"
    path.write_text(json.dumps(data))
    assert message in load_error("longhealth_t1", path)


def test_longhealth_correct_text_is_matched_exactly_or_inside_one_option(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"p1": patient(correct="heparin"), "p2": patient(answer_b="Heparin infusion")}))
    first, second = load("longhealth_t1", path)
    assert first.gold == "B"  # the same text, ignoring case
    assert second.gold == "B"  # the one option that contains it (CLUE's rule)


def many_documents(name: str, n: int) -> dict[str, Any]:
    record = patient()
    record["texts"] = {f"text_{i}": f"{name}, document {i}." for i in range(n)}
    return record


def test_longhealth_task1_repetitions_show_five_orders_of_the_same_documents(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"p1": many_documents("Patient one", 8)}))
    shuffles = load_examples(path, spec("longhealth_t1").data, repeats=5)
    assert [(e.id, e.repeat) for e in shuffles] == [("p1-q1", r) for r in range(5)]
    orders = [tuple(d["text"] for d in e.fields["documents"]) for e in shuffles]
    assert len(set(orders)) == 5 and len({frozenset(order) for order in orders}) == 1
    assert len({order.index("Patient one, document 0.") for order in orders}) > 1


def test_longhealth_task2_repetitions_draw_fresh_distractors(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    others = {f"p{k}": many_documents(f"Patient {k}", 8) for k in range(2, 6)}
    path.write_text(json.dumps({"p1": many_documents("Patient one", 2), **others}))
    runs = [e for e in load_examples(path, spec("longhealth_t2").data, repeats=5) if e.id == "p1-q1"]
    distractors = [frozenset(d["text"] for d in e.fields["documents"] if "Patient one" not in d["text"])
                   for e in runs]
    assert len(runs) == 5 and len(set(distractors)) == 5
    assert all("Patient one, document 0." in [d["text"] for d in e.fields["documents"]] for e in runs)


def test_longhealth_task2_needs_other_patients(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"p1": patient()}))
    assert "no other patient's documents" in load_error("longhealth_t2", path)


# --- fuzzing: only DataError ever escapes ------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=10,
)
KEYS = ["question", "opa", "opb", "opc", "opd", "cop", "id", "sentence1", "sentence2", "gold_label", "pairID",
        "CHQ", "Summary", "File", "Assessment", "Subjectives", "note_id", "with_discharge_summary", "without_discharge_summary", "Question",
        "Answer", "hadm_id", "text", "icd_codes", "QUESTION", "CONTEXTS", "final_decision", "texts", "questions"]
RECORDS = st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=8)
FILE_TASKS = [("medmcqa", ".json"), ("pubmedqa", ".json"), ("mednli", ".jsonl"), ("meqsum", ".csv"),
              ("problem_summary", ".csv"), ("medisumqa", ".jsonl"), ("medisumcode", ".jsonl"),
              ("longhealth_t1", ".json"), ("longhealth_t3", ".json")]


def only_data_errors(task: str, path: Path) -> None:
    try:
        load(task, path)
    except DataError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("task, suffix", [*FILE_TASKS, ("meqsum", ".xlsx")])
@FUZZ
@given(content=st.binary(max_size=300) | st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b))
def test_fuzz_bytes(tmp_path: Path, task: str, suffix: str, content: bytes) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    only_data_errors(task, path)


@pytest.mark.parametrize("task, suffix", FILE_TASKS)
@FUZZ_STRUCTURES
@given(value=st.lists(RECORDS, max_size=4) | st.dictionaries(st.text(max_size=8), RECORDS | JSON_VALUES, max_size=4))
def test_fuzz_json_structures(tmp_path: Path, task: str, suffix: str, value: Any) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        rows = value if isinstance(value, list) else [value]
        keys = sorted({k for r in rows for k in r}) or ["x"]
        write_csv(path, keys, [[json.dumps(r.get(k)) if not isinstance(r.get(k), str) else r.get(k) for k in keys]
                               for r in rows if isinstance(r, dict)])
    elif suffix == ".jsonl" and isinstance(value, list):
        write_jsonl(path, value)
    else:
        path.write_text(json.dumps(value), encoding="utf-8")
    only_data_errors(task, path)


@FUZZ
@given(rows=st.lists(st.lists(st.none() | st.text(max_size=15) | st.integers() | st.floats(allow_nan=False)
                              | st.datetimes(), min_size=0, max_size=4), max_size=5))
def test_fuzz_xlsx(tmp_path: Path, rows: list[list[Any]]) -> None:
    book = openpyxl.Workbook()
    for row in rows:
        try:
            book.active.append(row)
        except Exception:  # noqa: BLE001 - openpyxl refuses some strings (control characters); not our input
            return
    path = tmp_path / "m.xlsx"
    book.save(path)
    only_data_errors("meqsum", path)
