"""--shard K/N: shards run at once as separate processes into one run directory; the report merges them,
equals an unsharded run byte for byte, and names the shards that are missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeeval.errors import EdgeevalError
from edgeeval.run.shard import Shard
from edgeeval.run.store import RunStore, read_records

from cli_support import run_cli

N_SAMPLE = 36
MODELS = ("general-small", "bio-small")


def run_args(project: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--pair", "test", "--task", "case_challenges", "--engine", "fake",
            "--models-dir", str(project.parent / "models"), "--out", str(out), "--quiet", *extra]


def test_three_shards_at_once_merge_to_the_unsharded_run(project_dir, tmp_path, capsys):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert run_cli(project_dir, *run_args(project_dir, whole)) == 0
    env = {**os.environ, "EDGEEVAL_FAKE_DELAY_S": "0.02"}
    procs = [subprocess.Popen([sys.executable, "-m", "edgeeval.cli", *run_args(project_dir, sharded, "--shard", f"{k}/3")],
                              cwd=project_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    capsys.readouterr()
    assert run_cli(project_dir, "report", str(sharded)) == 0
    assert "warning" not in capsys.readouterr().err
    for name in ("results.csv", "comparison.csv"):
        assert (sharded / name).read_bytes() == (whole / name).read_bytes()
    for model in MODELS:
        files = sorted(p.name for p in (sharded / "records" / model).iterdir())
        assert files == [f"case_challenges.shard-{k}-of-3.jsonl" for k in range(3)]
        ids = [r.example_id for f in files for r in read_records(sharded / "records" / model / f)]
        assert len(ids) == N_SAMPLE == len(set(ids))  # every example once, in exactly one shard
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert sorted(i["shard"] for i in manifest["invocations"]) == ["0/3", "1/3", "2/3"]  # no shard clobbered another
    assert set(manifest["models"]) == set(MODELS)
    status = json.loads((sharded / "shards" / "shard-1-of-3.json").read_text())
    assert status["status"] == "finished" and status["node"]


def test_a_missing_shard_is_named_by_the_report(project_dir, tmp_path, capsys):
    out = tmp_path / "run"
    for k in (0, 2):
        assert run_cli(project_dir, *run_args(project_dir, out, "--shard", f"{k}/3")) == 0
    capsys.readouterr()
    assert run_cli(project_dir, "report", str(out)) == 0
    err = capsys.readouterr().err
    assert "shard(s) 1/3 missing" in err
    assert "shard(s) 1/3 missing" in (out / "report.md").read_text()
    # The missing shard done by an unsharded run: nothing else is redone, and the warning is gone.
    assert run_cli(project_dir, *run_args(project_dir, out)) == 0
    done = [len({r.example_id for r in read_records(out / "records" / "bio-small" / f"case_challenges.shard-{k}-of-3.jsonl")})
            for k in (0, 2)]
    assert f"{2 * (N_SAMPLE - sum(done))} examples generated, {2 * sum(done)} already done" in capsys.readouterr().out
    assert run_cli(project_dir, "report", str(out)) == 0
    assert "warning" not in capsys.readouterr().err


def test_shards_exclude_an_unsharded_run_and_their_twin(tmp_path):
    with RunStore(tmp_path, part="shard-0-of-2"), RunStore(tmp_path, part="shard-1-of-2"):
        with pytest.raises(EdgeevalError, match="in use"):
            RunStore(tmp_path)
        with pytest.raises(EdgeevalError, match="in use"):
            RunStore(tmp_path, part="shard-0-of-2")
    with RunStore(tmp_path):
        with pytest.raises(EdgeevalError, match="in use"):
            RunStore(tmp_path, part="shard-0-of-2")


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "1/0"])
def test_bad_shard_exits_2(project_dir, tmp_path, capsys, text):
    assert run_cli(project_dir, *run_args(project_dir, tmp_path / "run", f"--shard={text}")) == 2
    assert "--shard expects K/N" in capsys.readouterr().err


@given(st.integers(1, 9), st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30, unique=True))
def test_every_example_belongs_to_exactly_one_shard(count, ids):
    shards = [Shard(k, count) for k in range(count)]
    for example_id in ids:
        assert sum(shard.owns("task", example_id) for shard in shards) == 1


names = st.text(alphabet="abcxyz", min_size=1, max_size=3)


@given(st.dictionaries(names, names, max_size=4), st.dictionaries(names, names, max_size=4),
       st.lists(st.integers(0, 5), max_size=4), st.lists(st.integers(0, 5), max_size=4))
def test_merged_manifest_keeps_what_every_shard_wrote(theirs, mine, their_runs, my_runs):
    from edgeeval.run.store import Manifest, PairEntry, merge_manifests

    def manifest(pairs, runs):
        return Manifest(pairs={k: PairEntry(baseline=v, candidate=v) for k, v in pairs.items()},
                        invocations=[{"n": n} for n in runs])

    current = manifest(theirs, their_runs)
    merged = merge_manifests(current, manifest(mine, my_runs))
    assert set(merged.pairs) == set(theirs) | set(mine)
    assert all(merged.pairs[k].baseline == v for k, v in mine.items())  # this writer's entries win
    assert merged.invocations[:len(their_runs)] == current.invocations
    assert all({"n": n} in merged.invocations for n in my_runs)
