"""Option order and drift (issue 22): `--permute cyclic[:K]` rotations and their gold mapping, consistency, RStd,
PriDe, the chosen-letter test, resume and shards with rotations, and compare's flips, KL and verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeeval.data.example import Example
from edgeeval.data.permute import Permutation, original_key, rotate_examples, rotations
from edgeeval.errors import ConfigError
from edgeeval.run.store import read_records
from edgeeval.report.robustness import verdict_summary
from edgeeval.scoring.drift import drift, verdicts
from edgeeval.scoring.robustness import pride_debias, robustness
from edgeeval.scoring.stats import chi_square, homogeneity_test

from cli_support import run_cli
from conftest import make_project, write_tiny_gguf

LETTERS = "ABCDE"


def item(n: int, gold: str = "B", item_id: str = "q1") -> Example:
    options = {letter: f"text {letter.lower()}" for letter in LETTERS[:n]}
    return Example(id=item_id, fields={"question": "?", "options": options}, gold=gold, source="f.jsonl:1")


@pytest.mark.parametrize("n", [2, 4, 5])
def test_every_option_text_stands_once_at_every_position_and_gold_moves_with_its_text(n):
    original = item(n, gold="B")
    rotated = rotate_examples([original], Permutation.parse("cyclic"))
    assert [e.rotation for e in rotated] == list(range(n)) == [e.repeat for e in rotated]
    assert {e.unit_id for e in rotated} == {f"q1#{r}" for r in range(n)}
    for position in range(n):
        assert sorted(list(e.fields["options"].values())[position] for e in rotated) == sorted(original.fields["options"].values())
    for e in rotated:
        assert list(e.fields["options"]) == list(LETTERS[:n])  # the letters stay in order
        assert e.fields["options"][e.gold] == "text b"  # gold is the letter its text now has
        assert original_key(e.gold, list(e.fields["options"]), e.option_order) == "B"
        # The mapping back: the text shown at each letter is the original option's.
        assert all(e.fields["options"][shown] == original.fields["options"][orig]
                   for shown, orig in zip(LETTERS, e.option_order))
    assert sorted(e.gold for e in rotated) == list(LETTERS[:n])  # gold visits every position once


def test_k_rotations_are_the_first_k_and_never_more_than_the_options():
    assert [e.rotation for e in rotate_examples([item(5)], Permutation.parse("cyclic:3"))] == [0, 1, 2]
    assert [e.rotation for e in rotate_examples([item(2)], Permutation.parse("cyclic:4"))] == [0, 1]
    assert rotations(["A", "B", "C"], None) == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]


@pytest.mark.parametrize("bad", ["random", "cyclic:1", "cyclic:0", "cyclic:x", "cyclic:99", ""])
def test_a_bad_permutation_is_refused_with_what_is_allowed(bad):
    with pytest.raises(ConfigError, match="cyclic"):
        Permutation.parse(bad)


def test_labels_rotate_their_order_and_gold_stays_the_label():
    example = Example(id="p1", fields={"sentence1": "a", "sentence2": "b"}, gold="neutral", source="x:1")
    labels = ["entailment", "contradiction", "neutral"]
    rotated = rotate_examples([example], Permutation(), labels)
    assert [e.fields["labels"] for e in rotated] == [labels, labels[1:] + labels[:1], labels[2:] + labels[:2]]
    assert {e.gold for e in rotated} == {"neutral"}
    assert [e.fields["labels"].index("neutral") for e in rotated] == [2, 1, 0]
    assert original_key("neutral", rotated[1].fields["labels"], rotated[1].option_order) == "neutral"


def test_an_item_already_repeated_cannot_be_rotated():
    with pytest.raises(ConfigError, match="repeats"):
        rotate_examples([item(4).model_copy(update={"repeat": 0})], Permutation())


# --- consistency, RStd, the chosen-letter test ---------------------------------------------------------------

def rotated_frame(answer, n_items: int = 8, n: int = 4, model: str = "m") -> pl.DataFrame:
    """Scored rows of `n_items` items under all `n` rotations; `answer(item, rotation, gold_position)` gives the
    position the model answers (None: invalid)."""
    rows = []
    for i in range(n_items):
        gold_original = i % n
        for r in range(n):
            gold_position = (gold_original - r) % n
            position = answer(i, r, gold_position)
            order = [LETTERS[(p + r) % n] for p in range(n)]
            rows.append({"model": model, "task": "t", "example_id": f"q{i}", "repeat": r, "rotation": r, "kind": "multiple_choice",
                         "gold": LETTERS[gold_position], "parsed": None if position is None else LETTERS[position],
                         "error": None, "correct": position == gold_position, "answer_position": position,
                         "gold_position": gold_position, "n_options": n,
                         "answer_original": None if position is None else order[position]})
    return pl.DataFrame(rows)


def test_a_model_that_always_answers_a_has_no_consistency_and_the_largest_rstd():
    found = robustness(rotated_frame(lambda i, r, g: 0))
    row = found.rotations.row(0, named=True)
    assert row["consistency"] == 0.0
    # Recall 1 at position A, 0 elsewhere: the standard deviation of (1, 0, 0, 0).
    assert row["rstd"] == pytest.approx(np.std([1, 0, 0, 0]))
    assert row["accuracy"] == pytest.approx(0.25)
    bias = found.bias.row(0, named=True)
    assert bias["top"] == "A" and bias["top_share"] == 1.0 and bias["flagged"] and bias["p_value"] < 0.001
    chosen = found.positions.filter(pl.col("name") == "A").row(0, named=True)
    assert chosen["chosen"] == 1.0 and chosen["gold"] == 0.25


def test_a_model_that_follows_the_text_is_consistent_with_no_rstd():
    found = robustness(rotated_frame(lambda i, r, g: g))
    row = found.rotations.row(0, named=True)
    assert row["consistency"] == 1.0 and row["rstd"] == 0.0 and row["accuracy"] == 1.0
    assert not found.bias.row(0, named=True)["flagged"]


def test_consistency_counts_the_same_wrong_text_and_not_an_invalid_rotation():
    # Item 0: always the text one after gold (wrong, but the same option every time); item 1: one invalid answer.
    def answer(i, r, g):
        if i == 1 and r == 2:
            return None
        return (g + 1) % 4 if i == 0 else g
    found = robustness(rotated_frame(answer, n_items=2))
    assert found.rotations.row(0, named=True)["consistency"] == 0.5


def test_the_chosen_letter_test_flags_a_favourite_letter_and_not_chance():
    # 30 five-option questions, gold spread evenly; one model picks E 28 times (issue 22's Qwen 0.5B).
    gold = [i % 5 for i in range(30)]
    chi2, p = homogeneity_test([4] * 28 + [0, 1], gold, 5)
    assert p < 0.001 and chi2 > 20
    same, p_same = homogeneity_test(gold, gold, 5)
    assert same == 0.0 and p_same == 1.0
    assert chi_square(np.array([[3, 0, 1], [1, 0, 3]])) == pytest.approx(chi_square(np.array([[3, 1], [1, 3]])))
    assert math.isnan(homogeneity_test([], gold, 5)[1])


# --- PriDe ---------------------------------------------------------------------------------------------------

def biased_loglik_frame(bias: float, n_items: int = 200, n: int = 4, seed: int = 1) -> tuple[pl.DataFrame, float]:
    """A constructed model: each option's log-probability is its content's (gold higher, with noise) plus `bias`
    when it stands at position A. Returns the scored rows and the accuracy without the bias."""
    rng = np.random.default_rng(seed)
    rows, unbiased = [], []
    for i in range(n_items):
        content = rng.normal(0, 1.0, n)
        content[0] += 1.0  # original option A is gold
        for r in range(n):
            order = [(p + r) % n for p in range(n)]  # original option at each position
            logits = np.array([content[o] for o in order])
            gold_position = order.index(0)
            unbiased.append(float(np.argmax(logits) == gold_position))
            shown = logits + np.array([bias] + [0.0] * (n - 1))
            position = int(np.argmax(shown))
            rows.append({"model": "m", "task": "t", "example_id": f"q{i:03d}", "rotation": r, "error": None,
                         "gold_position": gold_position, "answer_position": position, "n_options": n,
                         "option_logprobs": shown.tolist(), "correct": position == gold_position})
    return pl.DataFrame(rows), float(np.mean(unbiased))


def test_pride_recovers_the_accuracy_of_a_model_without_its_letter_bias():
    frame, unbiased = biased_loglik_frame(bias=1.5)
    items, raw, debiased, gain, calibration, prior = pride_debias(frame, share=0.05, seed=0)
    assert items == 190 and len(calibration.split(", ")) == 10  # 5% of 200 items calibrate, the rest are scored
    assert raw < unbiased - 0.1  # the bias costs accuracy
    assert debiased == pytest.approx(unbiased, abs=0.03)  # and PriDe gives it back
    assert gain == pytest.approx(debiased - raw)
    assert prior.startswith("4 options: ")
    first = float(prior.split(": ")[1].split(",")[0])
    assert first > 0.4  # the prior puts most weight on position A


def test_pride_changes_nothing_for_a_model_without_bias():
    frame, unbiased = biased_loglik_frame(bias=0.0)
    _, raw, debiased, _, _, _ = pride_debias(frame, share=0.05, seed=0)
    assert abs(debiased - raw) < 0.03


def test_pride_needs_loglik_scores_and_two_items():
    frame, _ = biased_loglik_frame(bias=1.0, n_items=1)
    assert pride_debias(frame)[0] == 0
    assert pride_debias(frame.drop("option_logprobs"))[0] == 0


# --- runs: resume, shards, records ------------------------------------------------------------------------------

def fake_run(project: Path, out: Path, *extra: str, task: str = "medqa") -> int:
    return run_cli(project, "run", "--pair", "test", "--task", task, "--engine", "fake", "--quiet",
                   "--models-dir", str(project.parent / "models"), "--out", str(out), *extra)


def test_rotations_are_units_that_resume_and_shard(tmp_path, capsys):
    project = make_project(tmp_path)
    out = tmp_path / "run"
    assert fake_run(project, out, "--permute", "cyclic", "--limit", "2") == 0
    records = read_records(out / "records" / "bio-small" / "medqa.jsonl")
    assert sorted((r.example_id, r.rotation) for r in records) == sorted((r.example_id, k) for r in records[:1] for k in range(5)) + \
        sorted((r.example_id, k) for r in records[5:6] for k in range(5))
    for record in records:
        assert record.repeat == record.rotation and record.option_order is not None
        original = dict(zip(record.option_order, record.options.values()))  # original letter -> its text
        assert record.options == {shown: original[orig] for shown, orig in zip(record.options, record.option_order)}
    assert len({r.prompt_hash for r in records}) == 10
    capsys.readouterr()
    assert fake_run(project, out, "--permute", "cyclic", "--limit", "3") == 0
    assert "10 examples generated, 20 already done" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"]["medqa"]["permute"] == "cyclic" and manifest["tasks"]["medqa"]["units"] == 15
    report = (out / "report.md").read_text()
    assert "Each item was asked under 5 cyclic rotations of its options" in report
    assert "### Rotations of the options" in report

    sharded = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        assert fake_run(project, sharded, "--permute", "cyclic:3", "--limit", "3", "--shard", shard) == 0
    units = {(r.example_id, r.rotation) for path in (sharded / "records" / "bio-small").glob("medqa.*.jsonl")
             for r in read_records(path)}
    assert len(units) == 9 and {rotation for _, rotation in units} == {0, 1, 2}
    assert run_cli(project, "report", str(sharded)) == 0
    html = (sharded / "report.html").read_text()
    assert 'id="robustness"' in html and 'svg id="positions--' in html


def test_the_unpermuted_run_is_another_task_identity(tmp_path):
    project = make_project(tmp_path)
    assert fake_run(project, tmp_path / "a", "--limit", "1") == 0
    assert fake_run(project, tmp_path / "b", "--limit", "1", "--permute", "cyclic") == 0
    hashes = [json.loads((tmp_path / d / "manifest.json").read_text())["tasks"]["medqa"]["hash"] for d in "ab"]
    assert hashes[0] != hashes[1]


def test_permute_is_refused_for_tasks_it_cannot_rotate(tmp_path, capsys):
    project = make_project(tmp_path)
    for task, why in (("meqsum", "multiple-choice and label tasks; this one is summary"),
                      ("longhealth_t1", "already shuffle its documents"),
                      # MedNLI's template does not list the labels (its system text does, as CLUE's does).
                      ("mednli", "does not list the labels")):
        assert fake_run(project, tmp_path / "r", "--permute", "cyclic", task=task) != 0
        assert why in capsys.readouterr().err
    assert fake_run(project, tmp_path / "r", "--permute", "shuffled") != 0
    assert "expected 'cyclic' or 'cyclic:K'" in capsys.readouterr().err


def test_a_label_task_whose_template_lists_labels_is_rotated(tmp_path):
    project = make_project(tmp_path)
    template = project / "prompts" / "pubmedqa.j2"
    text = template.read_text()
    template.write_text(text.replace("yes, no or maybe.", "{{ labels[:-1] | join(', ') }} or {{ labels[-1] }}."))
    out = tmp_path / "r"
    assert fake_run(project, out, "--permute", "cyclic", "--limit", "2", task="pubmedqa") == 0
    records = read_records(out / "records" / "bio-small" / "pubmedqa.jsonl")
    assert len(records) == 6
    endings = {r.prompt.split("one word: ")[1].split(".")[0] for r in records}
    assert endings == {"yes, no or maybe", "no, maybe or yes", "maybe, yes or no"}
    assert all(r.gold in ("yes", "no", "maybe") and r.option_order for r in records)


def test_loglik_rotations_report_pride(tmp_path):
    project = make_project(tmp_path)
    out = tmp_path / "r"
    assert fake_run(project, out, "--permute", "cyclic", "--mode", "loglik", task="case_challenges") == 0
    report = (out / "report.md").read_text()
    line = next(l for l in report.splitlines() if l.startswith("| bio-small | case_challenges@loglik | 5 |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[8] != "–" and cells[12].startswith("cc-")  # PriDe items and the calibration items named


# --- drift and verdicts ----------------------------------------------------------------------------------------

def arm_rows(model: str, correct: list[bool], parsed: list[str], logprobs: list[list[float]] | None = None) -> list[dict]:
    return [{"model": model, "task": "t", "example_id": f"q{i}", "repeat": None, "error": None, "correct": c, "parsed": p,
             "option_logprobs": None if logprobs is None else logprobs[i]} for i, (c, p) in enumerate(zip(correct, parsed))]


def test_drift_counts_flips_both_ways_agreement_and_kl():
    before = arm_rows("r1:m", [True, True, False, False, True], ["A", "B", "C", "D", "A"],
                      [[0.0, -1.0], [0.0, -2.0], [-1.0, 0.0], [0.0, 0.0], [0.0, -1.0]])
    after = arm_rows("r2:m", [False, True, True, False, True], ["B", "B", "A", "D", "A"],
                     [[-1.0, 0.0], [0.0, -2.0], [0.0, -1.0], [0.0, 0.0], [0.0, -1.0]])
    row = drift(pl.DataFrame(before + after), "m", "r1:m", "r2:m").row(0, named=True)
    assert (row["n"], row["right_to_wrong"], row["wrong_to_right"]) == (5, 1, 1)
    assert row["p_mcnemar"] == 1.0 and row["agreement"] == pytest.approx(3 / 5)
    p = np.exp([0.0, -1.0]) / np.exp([0.0, -1.0]).sum()
    swapped = float(np.sum(p * (np.log(p) - np.log(p[::-1]))))
    assert row["kl_items"] == 5
    assert row["kl_max"] == pytest.approx(swapped) and row["kl_mean"] == pytest.approx(2 * swapped / 5)
    assert row["same_top"] == pytest.approx(3 / 5)


def test_a_verdict_that_changes_sign_or_significance_does_not_hold():
    comparison = pl.DataFrame([
        {"pair": "a:p", "task": "t1", "metric": "accuracy", "delta": 0.2, "p_holm": 0.01},
        {"pair": "a:p", "task": "t2", "metric": "accuracy", "delta": 0.1, "p_holm": 0.01},
        {"pair": "a:p", "task": "t3", "metric": "accuracy", "delta": -0.05, "p_holm": 0.5},
        {"pair": "b:p", "task": "t1", "metric": "accuracy", "delta": 0.15, "p_holm": 0.02},
        {"pair": "b:p", "task": "t2", "metric": "accuracy", "delta": 0.1, "p_holm": 0.2},
        {"pair": "b:p", "task": "t3", "metric": "accuracy", "delta": 0.05, "p_holm": 0.6},
    ])
    held = verdicts(comparison, {"p": [("a", "a:p"), ("b", "b:p")]})
    assert dict(zip(held["task"], held["holds"])) == {"t1": True, "t2": False, "t3": False}
    assert verdict_summary(held) == "The verdict changes between the runs in 2 of 3: p, t2, accuracy; p, t3, accuracy."
    assert verdict_summary(held.filter(pl.col("holds"))).startswith("Every verdict holds")


def test_compare_shows_drift_per_model_and_whether_each_verdict_holds(tmp_path, capsys):
    project = make_project(tmp_path)
    first, other = tmp_path / "q4", tmp_path / "q8"
    assert fake_run(project, first, "--mode", "loglik", task="case_challenges") == 0
    # The "requantized" general model: another file (the fake engine answers by the file's name), same entry name.
    models = project.parent / "models"
    write_tiny_gguf(models / "general-q8.gguf", "general")
    toml = project / "models.toml"
    toml.write_text(toml.read_text().replace('"general.gguf"', '"general-q8.gguf"'))
    assert fake_run(project, other, "--mode", "loglik", task="case_challenges") == 0
    out = tmp_path / "cmp"
    assert run_cli(project, "compare", str(first), str(other), "--out", str(out)) == 0
    report = (out / "report.md").read_text()
    assert "### Drift between runs" in report and "### Does each verdict hold?" in report
    drift_rows = [l for l in report.splitlines() if l.startswith("| general-small: q4 vs q8 | case_challenges@loglik")]
    assert len(drift_rows) == 1
    cells = [c.strip() for c in drift_rows[0].split("|")[1:-1]]
    assert int(cells[2]) == 36 and int(cells[3]) + int(cells[4]) > 0 and float(cells[9]) > 0  # flips and KL seen
    same = [l for l in report.splitlines() if l.startswith("| bio-small: q4 vs q8 | case_challenges@loglik")][0]
    assert [c.strip() for c in same.split("|")[1:-1]][3:5] == ["0", "0"]  # the same file: nothing moved
    capsys.readouterr()
    assert run_cli(project, "compare", str(first), str(other), "--out", str(tmp_path / "x"), "--match", "nobody=bio-small") != 0
    assert "has no model 'nobody'" in capsys.readouterr().err


# --- properties --------------------------------------------------------------------------------------------

@given(n=st.integers(2, 10), gold=st.integers(0, 9), count=st.one_of(st.none(), st.integers(2, 12)),
       answers=st.lists(st.integers(0, 9), min_size=12, max_size=12))
def test_any_rotation_maps_every_answer_back_to_the_option_it_names(n, gold, count, answers):
    letters = "ABCDEFGHIJ"[:n]
    original = Example(id="q", fields={"options": {l: f"text {l}" for l in letters}}, gold=letters[gold % n], source="s")
    rotated = rotate_examples([original], Permutation(count))
    assert len(rotated) == min(count or n, n)
    for example, answer in zip(rotated, answers):
        shown = list(example.fields["options"])
        assert shown == list(letters) and example.fields["options"][example.gold] == f"text {original.gold}"
        letter = shown[answer % n]
        # The letter answered names the option whose text stands there; mapped back, it is that option's letter.
        assert f"text {original_key(letter, shown, example.option_order)}" == example.fields["options"][letter]


@given(first=st.lists(st.integers(0, 4), min_size=1, max_size=40), second=st.lists(st.integers(0, 4), min_size=1, max_size=40))
def test_the_chosen_letter_test_gives_a_p_value_and_is_symmetric(first, second):
    chi2, p = homogeneity_test(first, second, 5, n_resamples=200)
    assert chi2 >= 0 and 1 / 201 <= p <= 1
    assert homogeneity_test(second, first, 5, n_resamples=200)[0] == pytest.approx(chi2)
