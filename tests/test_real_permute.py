"""`--permute cyclic` on the real demo pair (issue 22): a few case challenges under every rotation of their options,
in loglik mode, with every Python process audited for network access; the report shows each model's position plot
and its PriDe-debiased accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeeval.run.store import read_records

from conftest import LLAMA_THREADS
from test_offline import audited_env

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_pair_under_rotations_reports_positions_and_debiased_accuracy(real_models, tmp_path):
    env, log = audited_env(tmp_path)
    out = tmp_path / "permuted"
    edgeeval = Path(sys.executable).with_name("edgeeval")
    result = subprocess.run([str(edgeeval), "run", "--pair", "demo", "--task", "case_challenges", "--mode", "loglik",
                             "--permute", "cyclic", "--limit", "6", "--quiet", "--threads", str(LLAMA_THREADS),
                             "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), log.read_text()  # no process looked up or connected to anything
    for model in ("gemma3-270m", "smollm2-135m-instruct"):
        records = read_records(out / "records" / model / "case_challenges@loglik.jsonl")
        by_item: dict[str, list] = {}
        for record in records:
            by_item.setdefault(record.example_id, []).append(record)
        assert len(by_item) == 6 and all(r.error is None for r in records)
        for rotated in by_item.values():  # every rotation of an item: each text once at each letter, gold with it
            assert sorted(r.rotation for r in rotated) == list(range(len(rotated[0].options)))
            texts = {r.options[r.gold] for r in rotated}
            assert len(texts) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"]["case_challenges@loglik"]["permute"] == "cyclic"
    html = (out / "report.html").read_text()
    assert html.count('<svg id="positions--') == 2 and "answers at each position" in html
    report = (out / "report.md").read_text()
    rotations = report.split("### Rotations of the options")[1].split("\n\n")[2]  # the table after its paragraph
    rows = [line for line in rotations.splitlines() if line.startswith(("| gemma3-270m |", "| smollm2-135m-instruct |"))]
    assert len(rows) == 2, report
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        raw, debiased = float(cells[9]), float(cells[10])  # PriDe on the held-out items, both numbers there
        assert 0.0 <= raw <= 1.0 and 0.0 <= debiased <= 1.0 and int(cells[8]) >= 3
