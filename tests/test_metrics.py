"""Tests for edgeeval.scoring.metrics: per-example scores of every task kind, summaries and paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeeval.kinds.icd_coding import icd_counts
from edgeeval.kinds.summary import problem_f1, rouge_f
from edgeeval.scoring.metrics import compare_pair, metric_statistic, score_multiple_choice, score_records, summarize
from edgeeval.scoring.stats import holm, mcnemar_exact, paired_permutation


def _records(rows: list[tuple[str, str, str, str, str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "task": pl.String,
            "example_id": pl.String,
            "gold": pl.String,
            "parsed": pl.String,
            "error": pl.String,
        },
        orient="row",
    )


def _scored_pair(n: int, base_right: set[int], cand_right: set[int], task: str = "t") -> list:
    """Rows for models 'gen' and 'bio' on n items; wrong answers are parsed as 'B'."""
    rows = []
    for model, right in (("gen", base_right), ("bio", cand_right)):
        for i in range(n):
            rows.append((model, task, f"q{i}", "A", "A" if i in right else "B", None))
    return rows


def test_score_multiple_choice_flags() -> None:
    records = _records(
        [
            ("m", "t", "1", "A", "A", None),  # right
            ("m", "t", "2", "A", "B", None),  # wrong
            ("m", "t", "3", "A", None, None),  # unparseable
            ("m", "t", "4", "A", None, "timeout"),  # engine error
            ("m", "t", "5", "A", "A", "context overflow"),  # error wins over a stale parse
        ]
    )
    scored = score_multiple_choice(records)
    assert scored["correct"].to_list() == [True, False, False, False, False]
    assert scored["invalid"].to_list() == [False, False, True, False, False]
    assert scored["errored"].to_list() == [False, False, False, True, True]
    assert all(scored[c].dtype == pl.Boolean for c in ("correct", "invalid", "errored"))


def test_score_multiple_choice_handles_all_null_columns() -> None:
    records = pl.DataFrame(
        {
            "model": ["m"],
            "task": ["t"],
            "example_id": ["1"],
            "gold": ["A"],
            "parsed": [None],
            "error": [None],
        }
    )
    scored = score_multiple_choice(records)
    assert scored.select("correct", "invalid", "errored").row(0) == (False, True, False)


def test_score_multiple_choice_requires_columns() -> None:
    with pytest.raises(ValueError, match="parsed"):
        score_multiple_choice(pl.DataFrame({"model": ["m"], "task": ["t"]}))


def test_summarize_values_counts_and_determinism() -> None:
    records = _records(
        [("m", "t", str(i), "A", "A", None) for i in range(6)]
        + [("m", "t", "6", "A", None, None), ("m", "t", "7", "A", None, "oom")]
        + [("m", "u", "0", "A", "B", None)]
    )
    summary = summarize(score_multiple_choice(records), seed=1)
    assert summary.columns == ["model", "task", "metric", "value", "ci_low", "ci_high", "n"]
    values = {(r["task"], r["metric"]): r for r in summary.iter_rows(named=True)}
    assert set(values) == {
        (task, metric) for task in "tu" for metric in ("accuracy", "invalid_rate", "error_rate")
    }
    assert values[("t", "accuracy")]["value"] == 6 / 8  # errors count against accuracy
    assert values[("t", "invalid_rate")]["value"] == 1 / 8
    assert values[("t", "error_rate")]["value"] == 1 / 8
    assert values[("t", "accuracy")]["n"] == 8
    assert values[("u", "accuracy")]["value"] == 0.0
    for row in summary.iter_rows(named=True):
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert summarize(score_multiple_choice(records), seed=1).equals(summary)


def test_compare_pair_counts_and_mcnemar() -> None:
    # 20 items: both right on 0-9, baseline only on 10-11 (b=2), candidate only on 12-19 (c=8).
    scored = score_multiple_choice(
        _records(_scored_pair(20, set(range(12)), set(range(10)) | set(range(12, 20))))
    )
    table = compare_pair(scored, "gen-vs-bio", "gen", "bio", seed=0)
    assert table.columns == [
        "pair", "task", "metric", "baseline", "candidate", "delta", "ci_low", "ci_high",
        "p_value", "test", "n_paired", "b", "c", "p_holm",
    ]
    acc = table.filter(pl.col("metric") == "accuracy").row(0, named=True)
    assert (acc["pair"], acc["task"], acc["test"]) == ("gen-vs-bio", "t", "mcnemar_exact")
    assert (acc["n_paired"], acc["b"], acc["c"]) == (20, 2, 8)
    assert acc["baseline"] == pytest.approx(0.6)
    assert acc["candidate"] == pytest.approx(0.9)
    assert acc["delta"] == pytest.approx(0.3)
    assert acc["ci_low"] <= acc["delta"] <= acc["ci_high"]
    # n=10, k=2: 2 * (1 + 10 + 45) / 1024
    assert acc["p_value"] == pytest.approx(112 / 1024)
    assert acc["p_holm"] == acc["p_value"]  # a single task: nothing to correct for
    inv = table.filter(pl.col("metric") == "invalid_rate").row(0, named=True)
    assert (inv["b"], inv["c"], inv["p_value"], inv["delta"]) == (0, 0, 1.0, 0.0)


def test_compare_pair_pairs_only_shared_examples() -> None:
    rows = _scored_pair(5, {0, 1, 2}, {0, 1, 2, 3})
    rows.append(("gen", "t", "only-gen", "A", "A", None))
    rows.append(("bio", "t", "only-bio", "A", "B", None))
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    acc = table.filter(pl.col("metric") == "accuracy").row(0, named=True)
    assert acc["n_paired"] == 5
    assert acc["baseline"] == pytest.approx(0.6) and acc["candidate"] == pytest.approx(0.8)


def test_compare_pair_invalid_rate_uses_invalid_flags() -> None:
    rows = [
        ("gen", "t", "1", "A", None, None),
        ("gen", "t", "2", "A", None, None),
        ("gen", "t", "3", "A", "A", None),
        ("bio", "t", "1", "A", "A", None),
        ("bio", "t", "2", "A", "A", None),
        ("bio", "t", "3", "A", None, None),
    ]
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    inv = table.filter(pl.col("metric") == "invalid_rate").row(0, named=True)
    assert (inv["b"], inv["c"]) == (2, 1)
    assert inv["delta"] == pytest.approx(1 / 3 - 2 / 3)
    assert inv["p_value"] == mcnemar_exact(2, 1)
    assert inv["test"] == "mcnemar_exact"


def test_compare_pair_holm_within_each_metric() -> None:
    rows = (
        _scored_pair(30, set(range(5)), set(range(25)), task="medqa")
        + _scored_pair(30, set(range(10)), set(range(14)), task="pubmedqa")
        + _scored_pair(30, set(range(20)), set(range(20)), task="mmlu")
    )
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    assert table["task"].unique(maintain_order=True).to_list() == ["medqa", "pubmedqa", "mmlu"]
    for metric in ("accuracy", "invalid_rate"):
        part = table.filter(pl.col("metric") == metric)
        assert part["p_holm"].to_list() == pytest.approx(holm(part["p_value"].to_list()))
    acc = table.filter(pl.col("metric") == "accuracy")
    assert acc["p_holm"][0] == pytest.approx(min(1.0, 3 * mcnemar_exact(0, 20)))


def test_compare_pair_task_missing_for_one_model_is_reported_unpaired() -> None:
    rows = _scored_pair(4, {0}, {0, 1}) + [("gen", "extra", "x1", "A", "A", None)]
    table = compare_pair(score_multiple_choice(_records(rows)), "p", "gen", "bio")
    extra = table.filter(pl.col("task") == "extra")
    assert extra.height == 2
    assert extra["n_paired"].to_list() == [0, 0]
    assert all(math.isnan(v) for v in extra["p_value"].to_list())
    assert all(math.isnan(v) for v in extra["p_holm"].to_list())
    # The NaN row is not counted by Holm, so the real task keeps its unadjusted p-value.
    is_real = (pl.col("task") == "t") & (pl.col("metric") == "accuracy")
    real = table.filter(is_real).row(0, named=True)
    assert real["p_holm"] == real["p_value"]


def test_compare_pair_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    right_a = {i for i in range(100) if rng.random() < 0.5}
    right_b = {i for i in range(100) if rng.random() < 0.6}
    scored = score_multiple_choice(_records(_scored_pair(100, right_a, right_b)))
    first = compare_pair(scored, "p", "gen", "bio", seed=5)
    assert compare_pair(scored, "p", "gen", "bio", seed=5).equals(first)


def test_compare_pair_rejects_unknown_model_and_duplicates() -> None:
    scored = score_multiple_choice(_records(_scored_pair(3, {0}, {1})))
    with pytest.raises(ValueError, match="nope"):
        compare_pair(scored, "p", "gen", "nope")
    duplicated = pl.concat([scored, scored.filter(pl.col("model") == "gen").head(1)])
    with pytest.raises(ValueError, match="several records"):
        compare_pair(duplicated, "p", "gen", "bio")


# --- every kind of task -------------------------------------------------------------------------------------



def _frame(rows: list[dict], kind: str, metrics: str) -> pl.DataFrame:
    base = {"model": "m", "task": "t", "gold": None, "parsed": None, "error": None, "kind": kind, "metrics": metrics}
    return pl.DataFrame([{**base, "example_id": str(i), **row} for i, row in enumerate(rows)],
                        schema_overrides={"error": pl.String, "parsed": pl.String})


def _values(summary: pl.DataFrame) -> dict[str, float]:
    return {row["metric"]: row["value"] for row in summary.iter_rows(named=True)}


def test_rouge_on_hand_computed_pairs() -> None:
    # 5 of 6 unigrams shared (the x2, cat, on, mat); 3 of 5 bigrams; LCS "the cat on the mat" = 5.
    scores = rouge_f("the cat sat on the mat", "the cat lay on the mat")
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # Without stemming nothing matches; with it patient(s) and run(s/ning) do: P = 2/2, R = 2/3.
    assert rouge_f("patients were running", "patient runs")["rouge1"] == 0.0
    assert rouge_f("patients were running", "patient runs", stemmer=True)["rouge1"] == pytest.approx(0.8)
    assert rouge_f("anything", "")["rougeL"] == 0.0


def test_summary_scores_and_summary_rows() -> None:
    rows = [{"gold": "the cat sat on the mat", "parsed": "the cat lay on the mat"},
            {"gold": "a b", "parsed": "a b"},
            {"gold": "a b", "parsed": None},  # empty reply: invalid, scores 0
            {"gold": "a b", "parsed": "a b", "error": "prompt_too_long: ..."}]  # errors score 0
    scored = score_records(_frame(rows, "summary", "rouge1,rougeL,invalid_rate,error_rate"))
    assert scored["rouge1"].to_list() == pytest.approx([5 / 6, 1.0, 0.0, 0.0])
    assert scored["invalid"].to_list() == [False, False, True, False]
    values = _values(summarize(scored))
    assert list(values) == ["rouge1", "rougeL", "invalid_rate", "error_rate"]
    assert values["rouge1"] == pytest.approx((5 / 6 + 1) / 4)
    assert (values["invalid_rate"], values["error_rate"]) == (0.25, 0.25)


def test_problem_f1_matches_normalised_problems_exactly() -> None:
    # "acute kidney injury (AKI)" is not "acute kidney injury": only sepsis matches. 2*1 / (3 + 3).
    reply = "Sepsis\n- acute kidney injury (AKI)\nPneumonia"
    assert problem_f1("Sepsis; Acute kidney injury; COPD", reply) == pytest.approx(1 / 3)
    assert problem_f1("Sepsis; COPD;", "copd; SEPSIS.") == 1.0
    assert problem_f1("Sepsis", "") == 0.0


def test_icd_counts_keep_repeated_codes_and_average_the_valid_share_as_clue_does() -> None:
    """CLUE's compute_icd_f1 on lists: P counts each generated code found in gold, R each gold code found in the
    generated ones; the valid share is per example, 0 for a reply without codes."""
    counts = icd_counts("E119;E119;I10", "E119;E119;E119;Z9999")
    assert counts["code_precision"] == 0.75 and counts["code_recall"] == pytest.approx(2 / 3)
    assert counts["code_f1"] == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    assert counts["valid_code_share"] == 0.75
    assert (counts["code_tp"], counts["code_pred"], counts["code_gold"]) == (1, 2, 2)  # pooled: distinct codes
    assert icd_counts("I10", None)["valid_code_share"] == 0.0


def test_clue_reads_every_code_it_finds_and_the_lenient_parser_each_once() -> None:
    from edgeeval.kinds import icd_coding

    reply = "E11.9, E11.9 and I10; also C4A.0"
    assert icd_coding.parse_clue(reply, {}, [], "") == "E119;E119;I10"  # CLUE's pattern has no letter in 3rd place
    assert icd_coding.parse(reply, {}, [], "") == "E119;I10;C4A0"


def test_icd_counts_on_a_constructed_case() -> None:
    # Generated: I5023 (right), E1121 (wrong code, right category), N1830 and Z9999 (not in the table).
    counts = icd_counts("I5023;E1122;N183", "I5023;E1121;N1830;Z9999")
    assert (counts["code_tp"], counts["code_pred"], counts["code_gold"]) == (1, 4, 3)
    assert counts["code_precision"] == 0.25 and counts["code_recall"] == pytest.approx(1 / 3)
    assert counts["code_f1"] == pytest.approx(2 / 7)
    assert (counts["category_tp"], counts["category_pred"]) == (3, 4)  # I50, E11, N18 of I50, E11, N18, Z99
    assert counts["category_f1"] == pytest.approx(6 / 7)
    assert (counts["hallucinated"], counts["hallucination_units"]) == (2, 4)
    nothing = icd_counts("I10", None)
    assert (nothing["code_precision"], nothing["code_recall"], nothing["hallucination_units"]) == (0.0, 0.0, 0.0)


def test_icd_micro_averages_and_hallucination_rate() -> None:
    rows = [{"gold": "I5023;E1122;N183", "parsed": "I5023;E1121;N1830;Z9999"},  # tp 1, pred 4, gold 3, 2 invalid
            {"gold": "I10", "parsed": "I10"},                                  # tp 1, pred 1, gold 1
            {"gold": "K3580", "parsed": None}]                                 # nothing generated
    metrics = "code_f1,code_precision_micro,code_recall_micro,code_f1_micro,hallucination_rate,invalid_rate"
    values = _values(summarize(score_records(_frame(rows, "icd_coding", metrics))))
    assert values["code_precision_micro"] == pytest.approx(2 / 5)
    assert values["code_recall_micro"] == pytest.approx(2 / 5)
    assert values["code_f1_micro"] == pytest.approx(4 / 10)
    assert values["code_f1"] == pytest.approx((2 / 7 + 1 + 0) / 3)
    assert values["hallucination_rate"] == pytest.approx(2 / 5)
    assert values["invalid_rate"] == pytest.approx(1 / 3)


def test_macro_f1_hand_computed() -> None:
    # entailment: tp 1, fn 1 -> 2/3; contradiction: tp 1, fp 1 -> 2/3; neutral: fn 1 -> 0.
    rows = [{"gold": "entailment", "parsed": "entailment"}, {"gold": "entailment", "parsed": "contradiction"},
            {"gold": "contradiction", "parsed": "contradiction"}, {"gold": "neutral", "parsed": None}]
    values = _values(summarize(score_records(_frame(rows, "label", "accuracy,macro_f1"))))
    assert values["accuracy"] == 0.5
    assert values["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    statistic = metric_statistic("macro_f1", score_records(_frame(rows, "label", "macro_f1")))
    resamples = statistic(np.array([[0, 0, 0, 0], [0, 2, 3, 1]]), axis=1)
    assert resamples == pytest.approx([1.0, (2 / 3 + 2 / 3 + 0) / 3])


def test_abstention_and_hallucination_in_task_3() -> None:
    rows = [{"gold": "F", "parsed": "F"}, {"gold": "F", "parsed": "B"}, {"gold": "F", "parsed": None},
            {"gold": "F", "error": "SIGSEGV"}]
    scored = score_records(_frame(rows, "abstention", "abstention_rate,hallucination_rate,invalid_rate,error_rate"))
    assert scored["abstained"].to_list() == [True, False, False, False]
    assert scored["hallucinated"].to_list() == [0.0, 1.0, 1.0, 0.0]  # answering anyway; an error is neither
    values = _values(summarize(scored))
    assert (values["abstention_rate"], values["hallucination_rate"], values["error_rate"]) == (0.25, 0.5, 0.25)


def test_multiple_choice_hallucination_counts_unoffered_options() -> None:
    rows = [{"gold": "A", "parsed": "A"}, {"gold": "A", "parsed": None, "unoffered_choice": "F"},
            {"gold": "A", "parsed": None}]
    frame = _frame(rows, "multiple_choice", "accuracy,hallucination_rate,invalid_rate")
    values = _values(summarize(score_records(frame.with_columns(pl.col("unoffered_choice").cast(pl.String)))))
    assert values["hallucination_rate"] == pytest.approx(1 / 3) and values["invalid_rate"] == pytest.approx(2 / 3)


def test_confusion_rows_sum_to_one_per_gold_answer() -> None:
    rows = [{"gold": "yes", "parsed": "yes"}, {"gold": "yes", "parsed": "no"}, {"gold": "no", "parsed": "no"},
            {"gold": "yes", "parsed": None}, {"gold": "no", "error": "timeout"}]
    summary = summarize(score_records(_frame(rows, "label", "confusion")))
    cells = {row["metric"]: (row["value"], row["n"]) for row in summary.iter_rows(named=True)}
    assert cells["confusion_yes_as_yes"] == (pytest.approx(1 / 3), 3)
    assert cells["confusion_yes_as_invalid"] == (pytest.approx(1 / 3), 3)
    assert cells["confusion_no_as_error"] == (0.5, 2)
    for gold in ("yes", "no"):
        assert sum(v for m, (v, _) in cells.items() if m.startswith(f"confusion_{gold}_as_")) == pytest.approx(1.0)


def test_mixed_kinds_keep_their_rows_and_order() -> None:
    frame = pl.concat([_frame([{"gold": "A", "parsed": "A"}], "multiple_choice", "accuracy"),
                       _frame([{"gold": "a b", "parsed": "a"}], "summary", "rouge1"),
                       _frame([{"gold": "B", "parsed": "C"}], "multiple_choice", "accuracy")], how="diagonal_relaxed")
    scored = score_records(frame.with_columns(task=pl.Series(["x", "y", "z"])))
    assert scored["task"].to_list() == ["x", "y", "z"]
    assert scored["correct"].to_list()[0] is True and scored["rouge1"].to_list()[1] == pytest.approx(2 / 3)


def _paired(kind: str, metrics: str, gold: list[str], base: list[str | None], cand: list[str | None],
            task: str = "t") -> pl.DataFrame:
    frames = [_frame([{"gold": g, "parsed": p} for g, p in zip(gold, answers)], kind, metrics)
              .with_columns(model=pl.lit(model), task=pl.lit(task))
              for model, answers in (("gen", base), ("bio", cand))]
    return score_records(pl.concat(frames))


def test_continuous_metrics_use_a_paired_permutation_test() -> None:
    gold = ["the patient has a fever"] * 12
    table = compare_pair(_paired("summary", "rougeL,invalid_rate", gold, ["a fever"] * 12, gold), "p", "gen", "bio")
    rouge = table.filter(pl.col("metric") == "rougeL").row(0, named=True)
    assert rouge["test"] == "paired_permutation" and rouge["b"] is None and rouge["c"] is None
    assert rouge["candidate"] == 1.0 and rouge["delta"] == pytest.approx(1.0 - rouge["baseline"])
    # Every pair differs the same way: only the observed split (and its mirror) is as extreme, p ~ 2 / 2^12.
    assert rouge["p_value"] < 0.002 and rouge["ci_low"] == pytest.approx(rouge["delta"])
    assert table.filter(pl.col("metric") == "invalid_rate")["test"].to_list() == ["mcnemar_exact"]


def test_ratio_metric_comparison_keeps_the_pairs() -> None:
    gold = ["I10;E119"] * 6
    table = compare_pair(_paired("icd_coding", "code_recall_micro,hallucination_rate", gold,
                                 ["I10"] * 6, ["I10;E119;Z9999"] * 6), "p", "gen", "bio")
    recall = table.filter(pl.col("metric") == "code_recall_micro").row(0, named=True)
    assert (recall["baseline"], recall["candidate"], recall["test"]) == (0.5, 1.0, "paired_permutation")
    hallucination = table.filter(pl.col("metric") == "hallucination_rate").row(0, named=True)
    assert hallucination["candidate"] == pytest.approx(1 / 3) and hallucination["test"] == "paired_permutation"


def test_holm_runs_within_each_metric_across_tasks() -> None:
    gold = ["a b c d"] * 10
    scored = pl.concat([_paired("summary", "rougeL", gold, ["a"] * 10, gold, task="one"),
                        _paired("summary", "rougeL", gold, gold, gold, task="two")])
    table = compare_pair(scored, "p", "gen", "bio")
    assert table["p_holm"].to_list() == pytest.approx(holm(table["p_value"].to_list()))
    assert table["p_value"].to_list()[1] == 1.0


def test_paired_permutation_properties() -> None:
    same = np.array([0.2, 0.5, 0.9, 0.1])
    assert paired_permutation(same, same) == 1.0
    assert math.isnan(paired_permutation(np.array([]), np.array([])))
    rng = np.random.default_rng(3)
    base = rng.normal(size=40)
    assert paired_permutation(base, base + 1.0) < 0.001
    assert paired_permutation(base, base + 1.0, seed=7) == paired_permutation(base, base + 1.0, seed=7)
    assert paired_permutation(base, base + rng.normal(0, 0.01, 40)) > 0.05
    with pytest.raises(ValueError, match="differ in length"):
        paired_permutation(base, base[:3])


_CODES = st.lists(st.sampled_from(["I10", "E119", "E1122", "N183", "Z9999", "I5023", "K3580"]), max_size=5)


@settings(max_examples=60, deadline=None)
@given(gold=_CODES.filter(bool), found=_CODES)
def test_icd_counts_stay_in_bounds(gold: list[str], found: list[str]) -> None:
    counts = icd_counts(";".join(gold), ";".join(found) or None)
    for unit in ("code", "category"):
        p, r, f = (counts[f"{unit}_{part}"] for part in ("precision", "recall", "f1"))
        assert 0.0 <= min(p, r, f) and max(p, r, f) <= 1.0 and f <= max(p, r) + 1e-12
    # (category recall is not bounded below by code recall: gold I10, E11.9, E11.22 with E11.9 and
    # E11.22 found has code recall 2/3 but category recall 1/2; but finding every code finds every category)
    if set(found) >= set(gold):
        assert counts["code_recall"] == counts["category_recall"] == 1.0
    assert 0 <= counts["hallucinated"] <= counts["hallucination_units"] == len(set(found))


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["yes", "no", "maybe"]),
                                st.sampled_from(["yes", "no", "maybe", None])), min_size=1, max_size=12))
def test_label_summaries_stay_in_bounds(pairs: list[tuple[str, str | None]]) -> None:
    rows = [{"gold": g, "parsed": p} for g, p in pairs]
    summary = summarize(score_records(_frame(rows, "label", "accuracy,macro_f1,confusion")), seed=0)
    for row in summary.iter_rows(named=True):
        assert 0.0 <= row["ci_low"] <= row["value"] + 1e-12 and row["value"] <= row["ci_high"] + 1e-12 <= 1.0 + 1e-12
    values = _values(summary)
    if all(g == p for g, p in pairs):
        assert values["accuracy"] == values["macro_f1"] == 1.0
