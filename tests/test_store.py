"""The run store: records round-trip, torn lines are repaired, permissions are owner-only, one writer."""

import json
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeeval.errors import EdgeevalError
from edgeeval.run.store import Record, RunStore, read_records
from edgeeval.scoring.records import parse_answer
from edgeeval.types import ErrorKind


def record(example_id: str = "e1", output: str | None = "The answer is A", **kw) -> Record:
    base = dict(model="m", model_sha256="s" * 64, task="t", task_hash="h", example_id=example_id,
                prompt_hash="p", prompt="prompt", gold="A", output=output)
    base.update(kw)
    return Record(**base)


def test_append_and_load_round_trip(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.append(record("e1"))
        store.append(record("e2", output=None, error="native crash: killed by SIGSEGV"))
        assert [r.example_id for r in store.load("m", "t")] == ["e1", "e2"]
        assert store.load("m", "t")[1].error.startswith("native crash")


def test_owner_only_permissions_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        with RunStore(tmp_path / "run") as store:
            store.append(record())
            store.write_manifest({"x": 1})
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path in [run, run / "records", run / "records" / "m"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in [run / "records" / "m" / "t.jsonl", run / "manifest.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_torn_last_line_is_cut_and_earlier_records_kept(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.append(record("e1"))
        store.append(record("e2"))
        path = store.records_path("m", "t")
    with open(path, "ab") as handle:
        handle.write(b'{"model": "m", "example_id": "e3", "outp')  # killed mid-write
    with RunStore(tmp_path / "run") as store:
        assert [r.example_id for r in store.load("m", "t")] == ["e1", "e2"]
        store.append(record("e3"))
    assert [r.example_id for r in read_records(path)] == ["e1", "e2", "e3"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(record("e1").model_dump_json() + "\nnot json\n" + record("e2").model_dump_json() + "\n")
    with pytest.raises(EdgeevalError, match=r"t.jsonl:2: corrupt record"):
        read_records(path)


def test_second_writer_is_refused(tmp_path):
    with RunStore(tmp_path / "run"):
        with pytest.raises(EdgeevalError, match="in use by another edgeeval process"):
            RunStore(tmp_path / "run")
    RunStore(tmp_path / "run").close()  # free again once the first closed


def test_unwritable_output_location_is_a_clear_error(tmp_path):
    # (root ignores permission bits, so make the parent a regular file instead)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(EdgeevalError, match="cannot create run directory"):
        RunStore(blocker / "run")


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(text, min_size=1, max_size=5), outputs=st.lists(st.one_of(st.none(), text), min_size=1, max_size=5))
def test_arbitrary_unicode_round_trips(tmp_path_factory, ids, outputs):
    run = tmp_path_factory.mktemp("run")
    written = [record(i, output=o, prompt=i + "\n\u2028" + (o or "")) for i, o in zip(ids, outputs)]
    with RunStore(run) as store:
        for r in written:
            store.append(r)
        assert store.load("m", "t") == written


def test_a_broken_manifest_is_one_error_naming_the_file(tmp_path):
    from edgeeval.errors import DataError
    from edgeeval.run.store import load_manifest

    assert load_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: unreadable manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"tasks": {"t": {"kind": "label"}}}))
    with pytest.raises(DataError, match=r"tasks\.t\.hash: Field required"):
        load_manifest(tmp_path)


def test_a_manifest_keeps_keys_it_does_not_know(tmp_path):
    from edgeeval.run.store import load_manifest

    with RunStore(tmp_path) as store:
        store.write_manifest({"future": {"x": 1}, "tasks": {"t": {"hash": "h", "extra": True}}})
    manifest = load_manifest(tmp_path)
    assert manifest.tasks["t"].hash == "h" and manifest.tasks["t"].kind == "multiple_choice"
    assert json.loads((tmp_path / "manifest.json").read_text())["tasks"]["t"]["extra"] is True


# Lines as records were written before `error_kind` existed (scores rounded for reading).
OLD_RECORDS = [
    '{"model":"m","model_sha256":"' + "s" * 64 + '","task":"t","task_hash":"h","example_id":"e1","prompt_hash":"p",'
    '"prompt":"prompt","gold":"A","options":null,"output":null,"error":"native crash: worker killed by SIGSEGV '
    '(signal 11) while generating","truncation":null,"finish_reason":"error","mode":"generate","scores":null,'
    '"normalization":null,"n_prompt_tokens":null,"n_output_tokens":null,"seconds":0.0,"created":""}',
    '{"model":"m","model_sha256":"' + "s" * 64 + '","task":"t","task_hash":"h","example_id":"e2","prompt_hash":"p",'
    '"prompt":"prompt","gold":"A","options":null,"output":null,"error":"prompt_too_long: about 9000 tokens do not '
    'fit","truncation":null,"finish_reason":"error","mode":"generate","scores":null,"normalization":null,'
    '"n_prompt_tokens":null,"n_output_tokens":null,"seconds":0.0,"created":""}',
    '{"model":"m","model_sha256":"' + "s" * 64 + '","task":"t@loglik","task_hash":"h","example_id":"e3",'
    '"prompt_hash":"p","prompt":"prompt","gold":"B","options":{"A":"x","B":"y"},"output":"A","error":null,'
    '"truncation":null,"finish_reason":null,"mode":"loglik","scores":{"A":{"logprob":-2.0,"mean_logprob":-1.0,'
    '"n_tokens":2,"token_logprobs":[-1.5,-0.5],"is_greedy":false},"B":{"logprob":-1.25,"mean_logprob":-1.25,'
    '"n_tokens":1,"token_logprobs":[-1.25],"is_greedy":null}},"normalization":"mean","n_prompt_tokens":12,'
    '"n_output_tokens":null,"seconds":0.5,"created":"2025-01-01T00:00:00+00:00"}',
    '{"model":"m","model_sha256":"' + "s" * 64 + '","task":"t","task_hash":"h","example_id":"e4","prompt_hash":"p",'
    '"prompt":"prompt","gold":"A","output":null,"error":"something else entirely","finish_reason":"error"}',
]


def test_records_written_before_error_kind_load_with_the_kind_of_their_message(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(OLD_RECORDS) + "\n")
    crash, too_long, scored, other = read_records(path)
    assert crash.error_kind is ErrorKind.NATIVE_CRASH and crash.error.startswith("native crash: worker killed")
    assert too_long.error_kind is ErrorKind.PROMPT_TOO_LONG
    assert other.error_kind is ErrorKind.OTHER and other.error == "something else entirely"
    assert scored.error_kind is None
    # Scored as before: the answer comes from the recorded table, which loads unchanged.
    assert parse_answer(scored.model_dump(), "multiple_choice", []) == scored.output == "A"
    assert scored.scores["A"] == {"logprob": -2.0, "mean_logprob": -1.0, "n_tokens": 2,
                                  "token_logprobs": [-1.5, -0.5], "is_greedy": False}
    # Written again, the kind is stored; read again, nothing changes.
    again = tmp_path / "again.jsonl"
    again.write_text("".join(r.model_dump_json() + "\n" for r in (crash, too_long, scored, other)))
    assert '"error_kind":"native crash"' in again.read_text()
    assert read_records(again) == [crash, too_long, scored, other]


@given(kind=st.sampled_from(list(ErrorKind)), detail=text)
def test_the_kind_of_a_message_is_the_kind_it_was_made_with(kind, detail):
    assert ErrorKind.of_message(kind.message(detail)) is kind


def test_a_record_refuses_a_kind_without_an_error():
    with pytest.raises(ValidationError, match="error_kind"):
        record(error_kind=ErrorKind.ENGINE)


def test_a_record_refuses_an_unknown_finish_reason(tmp_path):
    with pytest.raises(ValidationError, match="finish_reason"):
        record(finish_reason="eos")
    for reason in ("stop", "length", "context", "error", None):  # what the engine and runner write
        record(finish_reason=reason)
    path = tmp_path / "t.jsonl"
    path.write_text(record().model_dump_json().replace('"finish_reason":null', '"finish_reason":"eos"') + "\n")
    with pytest.raises(EdgeevalError, match=r"t.jsonl:1: corrupt record"):
        read_records(path)
