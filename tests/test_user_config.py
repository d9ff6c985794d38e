"""The user's own config and tasks: which models.toml a command reads, the built-in tasks wherever the
config lives, and task folders that add tasks or replace built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeeval.run.planning import TASKS_DIR
from edgeeval.run.store import read_records

from cli_support import run_cli
from conftest import FAKE_MODELS_TOML, ROOT, real_model_paths, write_tiny_gguf

BUILTIN_TASKS = sorted(p.stem for p in (ROOT / TASKS_DIR).glob("*.toml"))
THREE_CASES = """id,question,opa,opb,opc,opd,answer_idx
w-1,"A ward question, first?",Alpha,Bravo,Charlie,Delta,A
w-2,"A ward question, second?",Alpha,Bravo,Charlie,Delta,B
w-3,"A ward question, third?",Alpha,Bravo,Charlie,Delta,C
"""


def models_toml(tmp_path: Path, folder: str, pair: str = "test") -> Path:
    """A models.toml of the two tiny GGUFs in tmp_path/models, alone in `folder` (no tasks, no prompts)."""
    models = tmp_path / "models"
    if not models.exists():
        models.mkdir()
        write_tiny_gguf(models / "general.gguf", "general")
        write_tiny_gguf(models / "bio.gguf", "bio")
    path = tmp_path / folder / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_MODELS_TOML.replace("[pairs.test]", f"[pairs.{pair}]"))
    return path


def user_task(folder: Path, name: str, rows: str = THREE_CASES, prompt: str = "{{ question }}") -> Path:
    """A plain task folder entry: NAME.toml, NAME.j2 and data/NAME.csv, paths relative to the folder."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.j2").write_text(prompt)
    (folder / "data" / f"{name}.csv").write_text(rows)
    path = folder / f"{name}.toml"
    path.write_text(f'kind = "multiple_choice"\nprompt = "{name}.j2"\n'
                    f'[data]\npath = "data/{name}.csv"\nformat = "multiple_choice"\n')
    return path


def listed_tasks(out: str) -> dict[str, str]:
    """`edgeeval tasks` output as task name -> where it came from."""
    lines = out.splitlines()
    names = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    origins = [line.split("from: ", 1)[1] for line in lines if line.strip().startswith("from: ")]
    assert len(names) == len(origins), out
    return dict(zip(names, origins))


def fake_run(cwd: Path, out: Path, *args: str) -> int:
    return run_cli(cwd, "run", "--pair", "test", "--engine", "fake", "--quiet", "--models-dir",
                   str(out.parent / "models"), "--out", str(out), *args)


# --- which models.toml ---------------------------------------------------------------------------------

def test_models_toml_is_found_in_the_documented_order(tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))

    def chosen() -> str:
        assert run_cli(scratch, "models") == 0
        return capsys.readouterr().out.splitlines()[0]

    assert chosen() == f"config: {ROOT / 'models.toml'} (from the packaged default)"
    user = models_toml(tmp_path, "xdg/edgeeval")
    assert chosen() == f"config: {user} (from the user config folder)"
    local = models_toml(tmp_path, "scratch")
    assert chosen() == f"config: {local} (from ./models.toml)"
    env = models_toml(tmp_path, "env")
    monkeypatch.setenv("EDGEEVAL_CONFIG", str(env))
    assert chosen() == f"config: {env} (from $EDGEEVAL_CONFIG)"
    flag = models_toml(tmp_path, "flag")
    assert run_cli(scratch, "models", "--config", str(flag)) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"config: {flag} (from --config)"


def test_a_named_config_that_is_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEEVAL_CONFIG", str(tmp_path / "nope.toml"))
    assert run_cli(tmp_path, "tasks") == 2
    err = capsys.readouterr().err
    assert err == f"edgeeval: error: {tmp_path / 'nope.toml'}: file not found (named by $EDGEEVAL_CONFIG)\n"


def test_a_config_elsewhere_keeps_the_built_in_tasks_and_chat_templates(tmp_path, capsys):
    """The issue's case: models.toml kept away from any checkout. Its chat templates ('prompts/chat/chatml.j2')
    are not beside it either, so they come from the built-in ones."""
    config = models_toml(tmp_path, "elsewhere")
    assert run_cli(tmp_path, "tasks", "--config", str(config)) == 0
    assert listed_tasks(capsys.readouterr().out) == {name: "built-in" for name in BUILTIN_TASKS}
    out = tmp_path / "run"
    assert fake_run(tmp_path, out, "--config", str(config), "--task", "case_challenges", "--limit", "4") == 0
    assert len(read_records(out / "records" / "bio-small" / "case_challenges.jsonl")) == 4


def test_a_chat_template_beside_the_config_wins_over_the_built_in_one(tmp_path):
    config = models_toml(tmp_path, "elsewhere")
    (config.parent / "prompts" / "chat").mkdir(parents=True)
    (config.parent / "prompts" / "chat" / "chatml.j2").write_text(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]")
    out = tmp_path / "run"
    assert fake_run(tmp_path, out, "--config", str(config), "--task", "case_challenges", "--limit", "1") == 0
    record = read_records(out / "records" / "bio-small" / "case_challenges.jsonl")[0]
    assert record.prompt.startswith("[system] ") and record.prompt.endswith("[assistant]")


# --- the user's task folders ---------------------------------------------------------------------------

def test_a_tasks_dir_adds_a_task_and_replaces_a_built_in_one(tmp_path, capsys):
    mine = tmp_path / "mine"
    user_task(mine, "ward_questions")
    user_task(mine, "case_challenges", rows=THREE_CASES.replace("w-", "own-"))
    config = models_toml(tmp_path, "elsewhere")
    assert run_cli(tmp_path, "tasks", "--config", str(config), "--tasks-dir", str(mine)) == 0
    origins = listed_tasks(capsys.readouterr().out)
    assert origins == {**{name: "built-in" for name in BUILTIN_TASKS}, "ward_questions": str(mine),
                       "case_challenges": str(mine)}
    out = tmp_path / "run"
    assert fake_run(tmp_path, out, "--config", str(config), "--tasks-dir", str(mine),
                    "--task", "ward_questions", "--task", "case_challenges") == 0
    records = read_records(out / "records" / "bio-small" / "case_challenges.jsonl")
    assert sorted(r.example_id for r in records) == ["own-1", "own-2", "own-3"]
    assert len(read_records(out / "records" / "general-small" / "ward_questions.jsonl")) == 3


def test_task_folders_from_the_environment_and_the_flag_later_one_wins(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    user_task(first, "ward_questions")
    user_task(first, "clinic_questions")
    user_task(second, "ward_questions")
    monkeypatch.setenv("EDGEEVAL_TASKS_DIRS", f"{first}:")
    assert run_cli(tmp_path, "tasks", "--tasks-dir", str(second)) == 0
    origins = listed_tasks(capsys.readouterr().out)
    assert origins["ward_questions"] == str(second) and origins["clinic_questions"] == str(first)


def test_a_tasks_dir_laid_out_like_the_repository(tmp_path, capsys):
    """benchmarks/clinical/*.toml with paths relative to the folder above, as in the package."""
    mine = tmp_path / "mine"
    (mine / "prompts").mkdir(parents=True)
    (mine / "prompts" / "ward.j2").write_text("{{ question }}")
    tasks = mine / "benchmarks" / "clinical"
    (tasks / "data").mkdir(parents=True)
    (tasks / "data" / "ward.csv").write_text(THREE_CASES)
    (tasks / "ward_questions.toml").write_text('kind = "multiple_choice"\nprompt = "prompts/ward.j2"\n'
                                               '[data]\npath = "benchmarks/clinical/data/ward.csv"\n')
    assert run_cli(tmp_path, "tasks", "--tasks-dir", str(mine)) == 0
    out = capsys.readouterr().out
    assert listed_tasks(out)["ward_questions"] == str(mine) and "    3 examples" in out


@pytest.mark.parametrize("text, expected", [
    ('kind = "multiple_choice"\nprompt = "ward.j2"\npromt = "x"\n[data]\npath = "data/ward.csv"\n',
     "unknown key 'promt'"),
    ('kind = "multiple_choice"\nprompt = "ward.j2"\n[data]\npath = "data/ward.csv"\n[data\n', "invalid TOML"),
    ('kind = "multiple_choice"\nprompt = "../outside.j2"\n[data]\npath = "data/ward.csv"\n',
     "is outside the project directory"),
])
def test_a_broken_user_task_is_one_line_naming_its_file(tmp_path, capsys, text, expected):
    mine = tmp_path / "mine"
    user_task(mine, "ward")
    (tmp_path / "outside.j2").write_text("{{ question }}")
    (mine / "ward.toml").write_text(text)
    assert run_cli(tmp_path, "tasks", "--tasks-dir", str(mine)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeeval: error: ") and expected in err
    assert str(mine / "ward.toml") in err or str(mine) in err
    # Another task is not held up by it.
    user_task(mine, "fine")
    out = tmp_path / "run"
    models_toml(tmp_path, "elsewhere")
    assert fake_run(tmp_path, out, "--config", str(tmp_path / "elsewhere" / "models.toml"),
                    "--tasks-dir", str(mine), "--task", "fine") == 0


@pytest.mark.parametrize("make, expected", [
    (lambda d: None, "not a folder"),
    (lambda d: d.mkdir(), "no task TOML in it"),
])
def test_a_tasks_dir_that_is_not_one(tmp_path, capsys, make, expected):
    make(tmp_path / "mine")
    assert run_cli(tmp_path, "tasks", "--tasks-dir", str(tmp_path / "mine")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "mine") in err and expected in err


def test_an_unknown_task_says_which_tasks_there_are(tmp_path, capsys):
    out = tmp_path / "run"
    models_toml(tmp_path, "elsewhere")
    assert fake_run(tmp_path, out, "--config", str(tmp_path / "elsewhere" / "models.toml"), "--task", "nope") == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and "case_challenges" in err and "--tasks-dir" in err


# --- edgeeval init -------------------------------------------------------------------------------------

def test_init_writes_a_project_that_runs_as_written(tmp_path, capsys):
    target = tmp_path / "hospital"
    assert run_cli(tmp_path, "init", str(target)) == 0
    printed = capsys.readouterr().out
    written = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert written == {"models.toml", "prompts/our_cases.j2", "benchmarks/clinical/our_cases.toml",
                       "benchmarks/clinical/data/our_cases.csv"}
    commands = [line.split("#")[0].split() for line in printed.splitlines() if line.startswith("  ")
                and not line.startswith(f"  {target}/")]
    assert commands[0] == ["cd", str(target)]
    assert [c[:2] for c in commands[1:]] == [["edgeeval", "tasks"], ["edgeeval", "run"]]
    assert run_cli(target, *commands[1][1:]) == 0
    assert listed_tasks(capsys.readouterr().out)["our_cases"] == str(target)
    if len(real_model_paths()) < 2:
        pytest.skip("the demo model packages are not installed (run scripts/setup.sh)")
    assert run_cli(target, *commands[2][1:], "--engine", "fake", "--quiet") == 0
    assert len(read_records(target / "runs" / "demo" / "records" / "gemma3-270m" / "our_cases.jsonl")) == 3
    assert (target / "runs" / "demo" / "report.html").is_file()


def test_init_never_replaces_a_file(tmp_path, capsys):
    target = tmp_path / "hospital"
    (target / "prompts").mkdir(parents=True)
    (target / "prompts" / "our_cases.j2").write_text("mine")
    assert run_cli(tmp_path, "init", str(target)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target / "prompts" / "our_cases.j2") in err and "already exists" in err
    assert (target / "prompts" / "our_cases.j2").read_text() == "mine" and not (target / "models.toml").exists()


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGPIPE"), reason="POSIX pipes")
def test_a_listing_whose_reader_has_gone_ends_quietly():
    """`edgeeval tasks | head -1` and the like: the reader has closed the pipe; edgeeval stops without a
    traceback or an error line, with the status a shell gives a command ended by SIGPIPE (128 + 13)."""
    import subprocess
    import sys

    from conftest import ROOT

    # The child lists the tasks only once its stdin closes, which the test does after closing the pipe's
    # reading end: its first write then certainly finds no reader.
    proc = subprocess.Popen([sys.executable, "-c", "import sys\nfrom edgeeval.cli import main\nsys.stdin.read()\n"
                             "sys.exit(main(['tasks']))"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), err) == (141, "")
