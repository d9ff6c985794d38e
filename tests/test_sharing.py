"""Shared prompt prefixes (issue 23): the rule that decides which prompts start from the held prefix and how the
holder changes (engine/sharing.py), the order units are answered in, and runs that stop inside a shared group."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edgeeval.engine.sharing import MIN_SHARED, Share, common_prefix, plan_share, share_order
from edgeeval.run.store import read_records

from cli_support import count_lines, fake_engine_env, run_cli, wait_for
from conftest import make_project

SHOTS = list(range(1000, 1000 + 3 * MIN_SHARED))  # a task's system prompt and shots, as tokens


def prompt(*tail: int) -> list[int]:
    return SHOTS + list(tail)


def simulate(prompts: list[list[int]]) -> tuple[list[int], int]:
    """What batched generation decodes for `prompts` queued in this order: the tokens each prompt took from the
    holder, and every token decoded (the holder's and the prompts' own), following plan_share as streams.py does."""
    held: list[int] = []
    used, decoded = [], 0
    for i, tokens in enumerate(prompts):
        share = plan_share(held, tokens, prompts[i + 1] if i + 1 < len(prompts) else None)
        held = held[: share.keep] + share.extend
        decoded += len(share.extend) + len(tokens) - share.use
        assert tokens[: share.use] == held[: share.use]  # what a prompt takes is what the holder holds
        used.append(share.use)
    return used, decoded


def test_the_first_two_prompts_that_share_set_the_holder_for_the_rest():
    first, second, third = prompt(1, 2), prompt(3, 4, 5), prompt(6)
    assert plan_share([], first, second) == Share(keep=0, extend=SHOTS, use=len(SHOTS))
    assert plan_share(SHOTS, second, third) == Share(keep=len(SHOTS), extend=[], use=len(SHOTS))
    assert plan_share(SHOTS, third, None) == Share(keep=len(SHOTS), extend=[], use=len(SHOTS))
    used, decoded = simulate([first, second, third])
    assert used == [len(SHOTS)] * 3 and decoded == len(SHOTS) + 2 + 3 + 1


def test_the_last_token_is_always_decoded_and_short_prefixes_are_not_shared():
    same = prompt(7)
    assert plan_share(same, same, same).use == len(same) - 1  # its logits are read: never from the holder
    short = list(range(MIN_SHARED - 1))
    assert plan_share([], short + [1], short + [2]) == Share(keep=0, extend=[], use=0)
    assert plan_share(short, short + [1], None).use == 0  # too little in common to pay for the copy


def test_a_longer_shared_prefix_cuts_the_holder_back_and_extends_it_once():
    documents = list(range(5000, 5000 + 4 * MIN_SHARED))
    held = SHOTS + [1, 2, 3]  # the last group's prefix
    first, second = SHOTS + documents + [10], SHOTS + documents + [11, 12]
    share = plan_share(held, first, second)
    assert share == Share(keep=len(SHOTS), extend=documents, use=len(SHOTS) + len(documents))
    # A prompt that shares the holder only a little more than it already offers keeps the holder as it is.
    nearly = SHOTS + documents[: MIN_SHARED - 1] + [99]
    assert not plan_share(SHOTS, nearly, nearly + [1]).changes_holder


def test_a_patient_s_documents_are_decoded_once_per_patient():
    """Twenty questions of each of three patients, their prompts in patient order: the documents are decoded
    once per patient, so the tokens decoded fall by more than ten times against decoding every prompt whole."""
    patients = [list(range(10_000 * p, 10_000 * p + 2000)) for p in (1, 2, 3)]
    prompts = [SHOTS + docs + [q, q + 1, q + 2] for docs in patients for q in range(20)]
    used, decoded = simulate(prompts)
    whole = sum(map(len, prompts))
    assert whole / decoded > 10
    assert all(u >= len(SHOTS) + 2000 for u in used)


@given(st.lists(st.text(alphabet="ab ", max_size=6), max_size=12))
def test_share_order_puts_prompts_that_share_more_closer(prompts):
    order = share_order(prompts)
    assert sorted(order) == list(range(len(prompts)))
    ordered = [prompts[i] for i in order]
    for i in range(len(ordered)):
        for j in range(i + 1, len(ordered)):
            for k in range(j + 1, len(ordered)):  # the one in between shares at least as much with the first
                assert common(ordered[i], ordered[k]) <= common(ordered[i], ordered[j])
    ties = [i for i in order if prompts[i] == (prompts[0] if prompts else None)]
    assert ties == sorted(ties)  # equal prompts keep their first order


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=40), min_size=1, max_size=10))
def test_the_holder_only_ever_gives_what_it_holds(prompts):
    prompts = [[7] * MIN_SHARED + p for p in prompts]  # a prefix worth sharing, then anything
    used, decoded = simulate(prompts)  # simulate checks every prompt's shared part against the holder
    assert all(u < len(p) for u, p in zip(used, prompts))
    assert decoded <= sum(map(len, prompts)) + sum(map(len, prompts))  # never worse than the prompts twice over


def common(a: str, b: str) -> int:
    return common_prefix(list(a), list(b))


# --- runs on the fake engine ------------------------------------------------------------------------------

def fake_run(project: Path, out: Path, *extra: str, task: str = "mednli") -> int:
    return run_cli(project, "run", "--pair", "test", "--task", task, "--engine", "fake", "--quiet",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), *extra)


def test_units_are_answered_with_prompts_that_share_a_prefix_together(tmp_path):
    project = make_project(tmp_path)
    toml = project / "benchmarks" / "clinical" / "longhealth_t1.toml"
    toml.write_text(toml.read_text().replace('documents = "patient"', 'documents = "patient"\ndocument_order = "patient"'))
    out = tmp_path / "run"
    assert fake_run(project, out, "--parallel", "2", task="longhealth_t1") == 0
    records = read_records(out / "records" / "bio-small" / "longhealth_t1.jsonl")
    prompts = [r.prompt for r in records]
    assert prompts == sorted(prompts)  # the order of share_order
    groups = [(r.example_id.rsplit("-q", 1)[0], r.repeat) for r in records]
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert len(runs) == len(set(groups))  # each patient's repetition answered in one run of units
    for a, b in zip(records, records[1:]):
        if (a.example_id.rsplit("-q", 1)[0], a.repeat) == (b.example_id.rsplit("-q", 1)[0], b.repeat):
            assert a.prompt.split("END DOCUMENTS")[0] == b.prompt.split("END DOCUMENTS")[0]


def test_a_run_killed_inside_a_shared_group_resumes_with_the_rest_of_it(tmp_path):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeeval.cli", "run", "--pair", "test", "--task", "mednli", "--engine", "fake",
           "--parallel", "2", "--models-dir", str(project.parent / "models"), "--out", str(out), "--quiet"]
    # Two sequences: engine calls of 8 units. The worker answers the first call and two units of the second,
    # then holds: the kill lands inside the task's one shared group (every prompt starts with the 3 shots).
    env = fake_engine_env(tmp_path, gate=tmp_path / "gate", gate_after=10)
    path = out / "records" / "general-small" / "mednli.jsonl"
    proc = subprocess.Popen(cmd, cwd=project, env=env)
    assert wait_for(lambda: count_lines(path) >= 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_records(path)
    assert len(before) == 8
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    after = read_records(path)
    assert after[:8] == before and len({r.example_id for r in after}) == len(after)
    total = json.loads((out / "manifest.json").read_text())["tasks"]["mednli"]["examples"]
    assert len(after) == total and f"{2 * total - 8} examples generated, 8 already done" in result.stdout
    rest = [r.prompt for r in after[8:]]
    assert rest == sorted(rest)  # the rest of the group, still in sharing order
    shots_end = common_prefix(list(after[0].prompt), list(after[-1].prompt))
    assert all(r.prompt[:shots_end] == after[0].prompt[:shots_end] for r in after) and shots_end > 200


def test_a_crash_inside_a_shared_batch_costs_one_example(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    sample = project / "benchmarks" / "clinical" / "data" / "mednli_sample.jsonl"
    victim = json.loads(sample.read_text().splitlines()[3])
    marker = victim["sentence2"]
    monkeypatch.setenv("EDGEEVAL_FAULT_INJECT", f"segv:{marker}")
    assert fake_run(project, out, "--parallel", "4") == 0
    for model in ("general-small", "bio-small"):
        records = read_records(out / "records" / model / "mednli.jsonl")
        failed = [r for r in records if r.error]
        assert [marker in r.prompt for r in failed] == [True] and "SIGSEGV" in failed[0].error
        assert all(r.output is not None for r in records if r.error is None) and len(records) > 8
