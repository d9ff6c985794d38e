"""The task-kind registry: every kind's parser, scorer, metrics (with their direction and paired test) and
loglik continuations come from its one module, and config, scoring, metrics and the report ask it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import polars as pl
import pytest

from edgeeval import kinds
from edgeeval.config.tasks import TaskSpec
from edgeeval.kinds.base import ACCURACY, COMMON, Kind, Metric, Ratio, answered, number
from edgeeval.report.findings import lower_is_better
from edgeeval.scoring.metrics import compare_pair, score_records, summarize
from edgeeval.scoring.records import parse_answer


def test_every_kind_declares_complete_metrics() -> None:
    for kind in kinds.KINDS.values():
        assert kind.metric_names, kind.name
        assert len(set(kind.metric_names)) == len(kind.metric_names), kind.name
        assert {"invalid_rate", "error_rate"} <= set(kind.metric_names), kind.name
        for metric in kind.metrics:
            assert (metric.ratio is not None) == (metric.form == "ratio"), (kind.name, metric.name)
            assert metric.form != "table" or metric.test is None, (kind.name, metric.name)
        assert kind.parser_version and kind.scorer_version


def test_failure_measures_are_lower_is_better_and_the_report_agrees() -> None:
    for name in ("invalid_rate", "error_rate", "hallucination_rate"):
        assert kinds.lower_is_better(name) and lower_is_better(name)
    for name in ("accuracy", "rougeL", "code_f1", "abstention_rate", "macro_f1", "confusion_A_as_B", "unknown"):
        assert not kinds.lower_is_better(name) and not lower_is_better(name)


def test_the_paired_test_follows_the_kind() -> None:
    assert kinds.metric("multiple_choice", "hallucination_rate").test == "mcnemar_exact"
    assert kinds.metric("icd_coding", "hallucination_rate").test == "paired_permutation"
    assert kinds.metric("label", "error_rate").test is None


def test_loglik_continuations_come_from_the_kind() -> None:
    options = {"A": "one", "B": "two"}
    assert kinds.get("multiple_choice").loglik_options("letter", [], options) == (("A", "A"), ("B", "B"))
    assert kinds.get("multiple_choice").loglik_options("full_text", [], options) == (("A", "one"), ("B", "two"))
    assert kinds.get("label").loglik_options("full_text", ["yes", "no"], options) == (("yes", "yes"), ("no", "no"))
    assert kinds.get("summary").loglik_options is None
    with pytest.raises(ValueError, match="no options"):
        kinds.get("multiple_choice").loglik_options("letter", [], {})


def test_an_unknown_kind_is_a_config_error_listing_the_kinds() -> None:
    with pytest.raises(ValueError, match="unknown kind .*multiple_choice, label, summary"):
        TaskSpec.model_validate({"name": "t", "kind": "essay", "prompt": "p.j2", "data": {"path": "d.csv"}})


def _yes_no_kind() -> Kind:
    """A new kind written the way a contributor would: one declaration, nothing else edited."""

    def parse(reply, options, labels, gold):
        word = reply.strip().split()[0].lower().strip(".,") if reply.strip() else ""
        return word if word in ("yes", "no") else None

    def score(records: pl.DataFrame) -> pl.DataFrame:
        return answered(records, said_yes=(pl.col("parsed") == "yes").fill_null(False))

    return Kind(name="yes_no", description="yes or no", parse=parse, score=score, parser_version="1",
                scorer_version="1",
                metrics=(ACCURACY, Metric("yes_rate", "replies saying yes", ratio=Ratio(number("said_yes")),
                                          test="mcnemar_exact"), *COMMON))


def test_a_new_kind_is_one_declaration(monkeypatch) -> None:
    kind = _yes_no_kind()
    monkeypatch.setitem(kinds.KINDS, kind.name, kind)
    spec = TaskSpec.model_validate({"name": "t", "kind": "yes_no", "prompt": "p.j2", "data": {"path": "d.csv"},
                                    "metrics": ["accuracy", "yes_rate", "invalid_rate"]})
    with pytest.raises(ValueError, match="do not apply to kind 'yes_no'"):
        TaskSpec.model_validate({**spec.model_dump(exclude_unset=True), "metrics": ["rougeL"]})
    replies = {"gen": ["Yes.", "no", "maybe", "yes"], "bio": ["Yes", "yes", "No.", "no"]}
    rows = [{"model": m, "task": "t", "example_id": str(i), "gold": g, "kind": "yes_no",
             "metrics": "accuracy,yes_rate,invalid_rate", "error": None,
             "parsed": parse_answer({"output": r, "gold": g}, "yes_no", [])}
            for m, rs in replies.items() for i, (r, g) in enumerate(zip(rs, ["yes", "no", "no", "yes"]))]
    scored = score_records(pl.DataFrame(rows))
    values = {(r["model"], r["metric"]): r["value"] for r in summarize(scored).iter_rows(named=True)}
    assert values[("gen", "accuracy")] == 0.75 and values[("bio", "accuracy")] == 0.5
    assert values[("gen", "yes_rate")] == 0.5 and values[("gen", "invalid_rate")] == 0.25
    tests = dict(compare_pair(scored, "p", "gen", "bio").select("metric", "test").iter_rows())
    assert tests == {"accuracy": "mcnemar_exact", "yes_rate": "mcnemar_exact", "invalid_rate": "mcnemar_exact"}


def test_a_metric_name_means_one_direction_in_every_kind(monkeypatch) -> None:
    clash = replace(_yes_no_kind(), metrics=(Metric("accuracy", "x", ratio=Ratio(number("correct")),
                                                    lower_is_better=True), *COMMON))
    monkeypatch.setitem(kinds.KINDS, clash.name, clash)
    with pytest.raises(AssertionError, match="accuracy"):
        kinds._directions()


def test_scoring_needs_neither_the_runner_nor_the_engine() -> None:
    # The values stages share (finish reasons, error kinds) are in edgeeval.types, so not even the engine's package is loaded.
    code = ("import sys, edgeeval.scoring.records, edgeeval.scoring.metrics, edgeeval.report; "
            "bad = [m for m in ('edgeeval.run.runner', 'edgeeval.run.planning', 'edgeeval.run.answering', "
            "'edgeeval.run.cluster', 'edgeeval.engine', 'edgeeval.engine.worker', 'edgeeval.engine.llama', 'llama_cpp') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
