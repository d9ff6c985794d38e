"""The report files from a fixed synthetic run (fake-engine answers, hand-written manifest): the
Markdown against its golden file, the exports round-tripping, --no-text leaving no text behind,
`edgeeval compare`, and the HTML's escaping and self-containment."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from edgeeval.cli import main
from edgeeval.engine import EngineSettings
from edgeeval.engine.fake import FakeModel
from edgeeval.prompting.chat import prompt_hash
from edgeeval.report import build_report
from edgeeval.report.exports import records_table, write_parquet
from edgeeval.report.findings import headline, tally_pair, verdict
from edgeeval.report.html import render_html
from edgeeval.report.study import Arm, ArmPair, Run, Study, study_from_run
from edgeeval.report.views import backend_summary
from edgeeval.run.store import Record, RunStore

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("EDGEEVAL_UPDATE_GOLDEN") == "1"

MODELS = {
    "general-small": {"family": "general", "file": "general-small.Q4_K_M.gguf", "quantization": "Q4_K_M"},
    "bio-small": {"family": "biomedical", "file": "bio-small.Q4_K_M.gguf", "quantization": "Q4_K_M"},
}
@dataclass(frozen=True)
class SyntheticTask:
    kind: str
    examples: int
    skill: dict[str, int]
    """How often each model knows the answer, in per cent."""
    metrics: tuple[str, ...]
    options: int = 0
    labels: tuple[str, ...] = ()


MC_METRICS = ("accuracy", "hallucination_rate", "invalid_rate", "error_rate")
TASKS = {
    "case_challenges": SyntheticTask("multiple_choice", 40, {"general-small": 60, "bio-small": 25}, MC_METRICS, 5),
    "jama_challenges": SyntheticTask("multiple_choice", 40, {"general-small": 45, "bio-small": 50}, MC_METRICS, 4),
    "medbullets": SyntheticTask("multiple_choice", 30, {"general-small": 40, "bio-small": 40}, MC_METRICS, 4),
    "mednli": SyntheticTask("label", 30, {"general-small": 75, "bio-small": 35},
                            ("accuracy", "macro_f1", "confusion", "invalid_rate", "error_rate"),
                            labels=("entailment", "contradiction", "neutral")),
    "meqsum": SyntheticTask("summary", 24, {"general-small": 50, "bio-small": 45},
                            ("rouge1", "rouge2", "rougeL", "invalid_rate", "error_rate")),
}
SYMPTOMS = ["crushing chest pain radiating to the left arm", "a three-week history of dry cough and night sweats",
            "sudden painless loss of vision in the right eye", "fever, neck stiffness and a petechial rash",
            "progressive exertional dyspnoea and ankle swelling", "intermittent haematuria and flank pain"]
DIAGNOSES = ["Acute coronary syndrome", "Pulmonary tuberculosis", "Central retinal artery occlusion",
             "Meningococcal meningitis", "Congestive heart failure", "Renal cell carcinoma", "Sarcoidosis",
             "Giant cell arteritis", "Infective endocarditis", "Aortic dissection"]
DRUGS = ["metformin", "warfarin", "amoxicillin", "lisinopril", "sertraline", "levothyroxine"]
# Answers that must never run as markup in report.html.
HOSTILE_OUTPUT = 'The answer is <script>document.title="pwned"</script><img src=x onerror="document.title=1"> B & "C".'
ERRORS = {("bio-small", "case_challenges", 7): "prompt_too_long: 5120 prompt tokens do not fit the 4096-token context window",
          ("general-small", "mednli", 3): "native crash: worker died with SIGSEGV (second attempt)"}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)?")


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


def _knows(model: str, task: str, index: int) -> bool:
    return _digest(model, task, index)[0] * 100 < TASKS[task].skill[model] * 256


def _chat(model: str, body: str) -> str:
    # Each model sees its own chat format, as in a real run.
    wrapper = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n" if model == "bio-small" else "<s>[INST] {} [/INST]"
    return wrapper.format(body)


def _example(task: str, index: int) -> tuple[str, dict[str, str] | None, str]:
    """(prompt body, options, gold) of one example."""
    spec, seed = TASKS[task], _digest(task, index)
    patient = f"a {30 + seed[2] % 50}-year-old patient"
    if spec.kind == "multiple_choice":
        letters = "ABCDEFGHIJ"[: spec.options]
        options = {letter: f"{DIAGNOSES[(seed[0] + k * 3) % len(DIAGNOSES)]} (variant {k})" for k, letter in enumerate(letters)}
        body = "\n".join([f"Case {task} {index}: {patient} presents with {SYMPTOMS[seed[3] % len(SYMPTOMS)]} for "
                          f"{2 + seed[4] % 12} days.", "Which is the most likely diagnosis?",
                          *(f"{k}. {v}" for k, v in options.items()), "Answer with the letter of the best option."])
        return body, options, letters[seed[1] % spec.options]
    if spec.kind == "label":
        body = (f"Premise: {patient} with {SYMPTOMS[seed[3] % len(SYMPTOMS)]} (note {index}).\n"
                f"Hypothesis: the patient has {DIAGNOSES[seed[0] % len(DIAGNOSES)].lower()}.\n"
                "Answer entailment, contradiction or neutral.")
        return body, None, spec.labels[seed[1] % len(spec.labels)]
    drug, condition = DRUGS[seed[3] % len(DRUGS)], DIAGNOSES[seed[0] % len(DIAGNOSES)].lower()
    body = (f"Summarize the question in one sentence: Hello doctor, I am {patient} (message {index}) with "
            f"{condition} and my GP started {drug} last week. How much {drug} should I take, and for how long?")
    return body, None, f"What is the dose and duration of {drug} for {condition}?"


def _output(model: str, task: str, index: int, prompt: str, options, gold: str) -> str:
    spec, seed = TASKS[task], _digest(model, task, index)
    if (model, task, index) == ("bio-small", "jama_challenges", 5):
        return HOSTILE_OUTPUT
    if spec.kind == "multiple_choice":
        if _knows(model, task, index):
            return f"Based on the findings, the answer is {gold}."
        if model == "bio-small" and seed[1] % 9 == 0:
            return "The answer is H."  # an option that was never offered
        return FakeModel(model, EngineSettings(backend="fake", n_ctx=4096)).generate(prompt, 64, []).text
    if spec.kind == "label":
        label = gold if _knows(model, task, index) else spec.labels[seed[1] % len(spec.labels)]
        return "I cannot decide." if seed[2] % 10 == 0 else f"The relation is {label}."
    drug = gold.split(" of ")[1].split(" for ")[0]
    return (f"What is the right dose of {drug} and for how long?" if _knows(model, task, index)
            else f"Patient asks about side effects of {drug}.")


def manifest() -> dict:
    task_meta = {name: {"hash": _digest("task", name).hex()[:16], "data": f"/data/{name}.jsonl",
                        "data_sha256": _digest("data", name).hex(), "examples": spec.examples, "kind": spec.kind,
                        "labels": list(spec.labels), "metrics": list(spec.metrics), "rouge_stemmer": False,
                        "max_tokens": 64, "prompt": f"prompts/{name}.j2"} for name, spec in TASKS.items()}
    models = {name: {"path": f"/models/{m['file']}", "sha256": _digest("model", name).hex(), "size_bytes": 812_000_000,
                     "architecture": "llama", "name": name, "quantization": m["quantization"], "context_length": 4096,
                     "family": m["family"], "base": None, "source": "test", "chat_template": "gguf"}
              for name, m in MODELS.items()}
    engine = {name: {"backend": "fake", "system_info": "fake engine (no model)", "gpu_offload": False}
              for name in MODELS}
    return {
        "edgeeval": "0.1.0", "llama_cpp_python": "0.3.36",
        "machine": {"cpu": "Test CPU @ 2.0GHz", "machine": "x86_64", "platform": "Linux-test", "python": "3.11.7"},
        "settings": {"backend": "fake", "n_threads": 4, "n_gpu_layers": 0, "n_ctx": 4096, "seed": 0},
        "pairs": {"small": {"baseline": "general-small", "candidate": "bio-small"}},
        "models": models, "tasks": task_meta, "engine": engine,
        "invocations": [{"finished": "2025-01-02T03:04:05+00:00", "wall_seconds": 12.5, "generated": 328,
                         "skipped_done": 0, "errors": 2, "argv": []}],
    }


def synthetic_run(out: Path) -> Path:
    """A run directory as `edgeeval run` writes it: two models, five tasks of three kinds."""
    meta = manifest()
    with RunStore(out) as store:
        store.write_manifest(meta)
        for model in MODELS:
            for task, spec in TASKS.items():
                for index in range(1, spec.examples + 1):
                    body, options, gold = _example(task, index)
                    prompt = _chat(model, body)
                    error = ERRORS.get((model, task, index))
                    output = None if error else _output(model, task, index, prompt, options, gold)
                    store.append(Record(
                        model=model, model_sha256=meta["models"][model]["sha256"], task=task,
                        task_hash=meta["tasks"][task]["hash"], example_id=f"{task[:4]}-{index:03d}",
                        prompt_hash=prompt_hash(prompt), prompt=prompt, gold=gold, options=options, output=output,
                        error=error, finish_reason="error" if error else "stop", n_prompt_tokens=len(prompt.split()),
                        n_output_tokens=None if error else len(output.split()), seconds=0.01,
                        created="2025-01-02T03:04:00+00:00"))
    return out


@pytest.fixture(scope="session")
def synthetic_template(tmp_path_factory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("synthetic") / "run")


@pytest.fixture
def copy_run(synthetic_template, tmp_path):
    """A fresh copy of the synthetic run at tmp_path/<name> (writing the records once is the slow part)."""
    def copy(name: str) -> Path:
        return Path(shutil.copytree(synthetic_template, tmp_path / name))
    return copy


@pytest.fixture
def run_dir(copy_run) -> Path:
    return copy_run("run-a")


@pytest.fixture(scope="session")
def built_run(synthetic_template, tmp_path_factory) -> Path:
    """A copy of the synthetic run with its report files written once; for tests that only read them."""
    run = Path(shutil.copytree(synthetic_template, tmp_path_factory.mktemp("built") / "run-a"))
    build_report(run)
    return run


def normalized(text: str) -> str:
    """Report text with what changes from one build to the next (timestamps) masked."""
    return TIMESTAMP.sub("<timestamp>", text)


def assert_matches_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(normalized(text))
    assert path.exists(), f"no golden file {path}; run with EDGEEVAL_UPDATE_GOLDEN=1 to write it"
    assert normalized(text) == path.read_text(), f"{name} differs from its golden file (EDGEEVAL_UPDATE_GOLDEN=1 rewrites it)"


def text_strings(run: Path, min_length: int = 8) -> set[str]:
    """Every prompt and answer text of the run's records, and each longer line of them."""
    strings = set()
    for path in (run / "records").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            for text in (record["prompt"], record["output"]):
                if text:
                    strings.add(text)
                    strings.update(part for part in text.splitlines() if len(part) >= 20)
            strings.update(v for v in (record.get("options") or {}).values())
    return {s for s in strings if len(s) >= min_length}


# --- Markdown -------------------------------------------------------------------------------


def test_markdown_report_matches_golden(built_run):
    assert_matches_golden((built_run / "report.md").read_text(), "report.md")


def test_markdown_summary_reads_like_the_study(built_run):
    text = (built_run / "report.md").read_text()
    assert "| task | metric | general | biomedical | delta [95% CI] | p (Holm) | n | verdict |" in text
    assert "## Paired comparison: small — general vs biomedical" in text
    assert "general better" in text  # case_challenges: 60% vs 25% known answers
    for task in TASKS:
        assert f"### {task}" in text


def test_golden_comparison_ignores_timestamps(built_run):
    text = (built_run / "report.md").read_text()
    finished = manifest()["invocations"][0]["finished"]
    assert finished in text
    later = text.replace(finished, "2031-12-31T23:59:59.123+00:00")
    assert normalized(later) == normalized(text) and "<timestamp>" in normalized(text)


def test_a_run_without_records_still_gets_every_report_file(tmp_path):
    with RunStore(tmp_path / "empty") as store:
        store.write_manifest(manifest())
    report = build_report(tmp_path / "empty")
    assert "No pair has records for both models yet." in report.read_text()
    assert "No pair has records for both models yet." in report.with_name("report.html").read_text()
    assert pl.read_parquet(report.with_name("comparison.parquet")).height == 0


# --- exports --------------------------------------------------------------------------------


def test_all_report_files_are_written_owner_only(built_run):
    for name in ("results.csv", "results.parquet", "comparison.csv", "comparison.parquet", "records.parquet",
                 "report.md", "report.html"):
        path = built_run / name
        assert path.is_file(), name
        assert path.stat().st_mode & 0o777 == 0o600, name


def test_exports_match_the_study(built_run):
    run_dir = built_run
    study = study_from_run(run_dir)
    assert_frame_equal(pl.read_parquet(run_dir / "records.parquet"), records_table(study.scored))
    assert_frame_equal(pl.read_parquet(run_dir / "comparison.parquet"), study.comparison)
    assert_frame_equal(pl.read_parquet(run_dir / "results.parquet"), study.results)
    assert_frame_equal(pl.read_csv(run_dir / "comparison.csv"), study.comparison, check_dtypes=False)
    records = pl.read_parquet(run_dir / "records.parquet")
    assert records.height == 2 * sum(t.examples for t in TASKS.values())
    assert records.select("model", "task", "example_id").is_unique().all()
    assert {"parsed", "correct", "invalid", "errored", "prompt", "output"} <= set(records.columns)


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_RECORD_ROWS = st.lists(
    st.fixed_dictionaries({
        "model": st.sampled_from(["general-small", "bio-small"]),
        "task": st.sampled_from(["case_challenges", "mednli"]),
        "example_id": st.text(min_size=1, max_size=8),
        "gold": st.sampled_from(["A", "B", "C"]),
        "output": st.none() | _TEXT,
        "error": st.none() | _TEXT,
        "prompt": _TEXT,
        "n_output_tokens": st.none() | st.integers(0, 10_000),
        "seconds": st.floats(0, 1e6, allow_nan=False),
        "parsed": st.none() | st.sampled_from(["A", "B", "C"]),
        "correct": st.booleans(),
    }),
    max_size=30,
    unique_by=lambda r: (r["model"], r["task"], r["example_id"]),
)
_SCHEMA = {"model": pl.String, "task": pl.String, "example_id": pl.String, "gold": pl.String, "output": pl.String,
           "error": pl.String, "prompt": pl.String, "n_output_tokens": pl.Int64, "seconds": pl.Float64,
           "parsed": pl.String, "correct": pl.Boolean}


@settings(max_examples=60, deadline=None)
@given(rows=_RECORD_ROWS)
def test_records_parquet_round_trips(tmp_path_factory, rows):
    frame = records_table(pl.DataFrame(rows, schema=_SCHEMA))
    path = tmp_path_factory.mktemp("parquet") / "records.parquet"
    write_parquet(frame, path)
    assert_frame_equal(pl.read_parquet(path), frame)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.tuples(st.floats(allow_infinity=False), st.floats(0, 1), st.integers(0, 10**6)), max_size=20))
def test_comparison_exports_round_trip(tmp_path_factory, values):
    frame = pl.DataFrame([("p", f"t{i}", "accuracy", delta, p, n) for i, (delta, p, n) in enumerate(values)],
                         schema={"pair": pl.String, "task": pl.String, "metric": pl.String, "delta": pl.Float64,
                                 "p_value": pl.Float64, "n_paired": pl.Int64}, orient="row")
    path = tmp_path_factory.mktemp("exports") / "comparison.parquet"
    write_parquet(frame, path)
    assert_frame_equal(pl.read_parquet(path), frame)
    assert_frame_equal(pl.read_csv(frame.write_csv().encode(), schema=frame.schema), frame)


# --- --no-text ------------------------------------------------------------------------------


def test_no_text_output_holds_no_prompt_or_answer(run_dir, tmp_path, capsys):
    share = tmp_path / "share"
    assert main(["report", str(run_dir), "--no-text", "--out", str(share)]) == 0
    written = sorted(p.name for p in share.iterdir())
    assert written == ["comparison.csv", "comparison.parquet", "records.parquet", "report.html", "report.md",
                       "results.csv", "results.parquet"]
    strings = text_strings(run_dir)
    assert len(strings) > 500
    for path in share.iterdir():
        data = path.read_bytes()
        for text in strings:
            for form in {text, text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}:
                assert form.encode() not in data, f"{path.name} holds record text {text[:60]!r}"
    html = (share / "report.html").read_text()
    assert "jama-005" in html and "case-007" in html  # ids, gold and parsed answers remain
    records = pl.read_parquet(share / "records.parquet")
    assert {"prompt", "output", "options"}.isdisjoint(records.columns)
    assert set(records["error"].drop_nulls()) == {"prompt_too_long", "native crash"}
    assert "html:" in capsys.readouterr().out


def test_no_text_keeps_the_numbers(built_run, tmp_path):
    assert build_report(built_run, no_text=True, out_dir=tmp_path / "share") == tmp_path / "share" / "report.md"
    assert (tmp_path / "share" / "comparison.csv").read_text() == (built_run / "comparison.csv").read_text()


# --- compare --------------------------------------------------------------------------------


def test_compare_pairs_arms_across_runs(run_dir, built_run, tmp_path, capsys):
    other = tmp_path / "run-b"
    shutil.copytree(run_dir, other)
    meta = json.loads((other / "manifest.json").read_text())
    meta["models"]["bio-small"]["quantization"] = "Q8_0"
    (other / "manifest.json").write_text(json.dumps(meta))
    out = tmp_path / "cmp"
    assert main(["compare", str(run_dir), str(other), "--out", str(out)]) == 0
    assert f"report: {(out / 'report.md').resolve()}" in capsys.readouterr().out
    assert out.stat().st_mode & 0o777 == 0o700
    for name in ("comparison.csv", "report.md", "report.html"):
        assert (out / name).stat().st_mode & 0o777 == 0o600
    comparison = pl.read_csv(out / "comparison.csv")
    pairs = comparison["pair"].unique(maintain_order=True).to_list()
    assert pairs == ["general-small: run-a vs run-b", "bio-small: run-a vs run-b", "run-a:small", "run-b:small"]
    same = comparison.filter(pl.col("pair") == "bio-small: run-a vs run-b")
    # The same records on both sides: no difference at all, every example paired.
    assert set(same["delta"]) == {0.0} and set(same["p_value"]) == {1.0}
    assert dict(same.select("task", "n_paired").unique().iter_rows()) == {t: s.examples for t, s in TASKS.items()}
    within = comparison.filter(pl.col("pair") == "run-a:small").drop("pair")
    assert_frame_equal(within, pl.read_csv(built_run / "comparison.csv").drop("pair"))
    text = (out / "report.md").read_text()
    assert "run-b:bio-small" in text and "Q8_0" in text


def test_compare_pairs_on_example_ids(run_dir, copy_run, tmp_path):
    # A later run on fewer examples: pairs only what both have.
    other = copy_run("later")
    for path in (other / "records").rglob("*.jsonl"):
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[::2]) + "\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(run_dir), str(other), "--out", str(out)]) == 0
    comparison = pl.read_csv(out / "comparison.csv").filter(pl.col("pair").str.contains("vs"))
    assert dict(comparison.select("task", "n_paired").unique().iter_rows()) == {
        t: (s.examples + 1) // 2 for t, s in TASKS.items()}


def test_compare_labels_runs_apart_and_warns_about_changed_tasks(copy_run, tmp_path):
    a, b = copy_run("site1/run"), copy_run("site2/run")
    meta = json.loads((b / "manifest.json").read_text())
    meta["tasks"]["mednli"]["hash"] = "0123456789abcdef"
    (b / "manifest.json").write_text(json.dumps(meta))
    for path in (b / "records").rglob("mednli.jsonl"):
        path.write_text(path.read_text().replace(manifest()["tasks"]["mednli"]["hash"], "0123456789abcdef"))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "site1/run:general-small" in text and "site2/run:bio-small" in text
    assert "task mednli: the prompt, data or settings differ between runs" in text


def test_compare_rejects_a_directory_that_is_not_a_run(run_dir, tmp_path, capsys):
    assert main(["compare", str(run_dir), str(tmp_path), "--out", str(tmp_path / "cmp")]) == 2
    assert "not an edgeeval run directory" in capsys.readouterr().err


def test_compare_default_out_dir_has_a_timestamp(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(run_dir)]) == 0
    [out] = list(tmp_path.glob("compare-*"))
    assert re.fullmatch(r"compare-\d{8}-\d{6}", out.name) and (out / "report.html").is_file()


# --- HTML (the browser tests are in test_report_browser.py) ------------------------------------


def test_html_is_self_contained_and_escapes_model_output(built_run):
    html = (built_run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert {v for v in attribute_values(html, URL_ATTRIBUTES) if not v.startswith("#")} == set()
    assert "url(" not in html and "@import" not in html
    assert "<script>document.title" not in html and "<img src=x" not in html
    assert html.count("<script>") == 1
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in html
    assert "Content-Security-Policy" in html


def test_html_shows_every_number_with_a_way_down_to_examples(built_run):
    html = (built_run / "report.html").read_text()
    for task in TASKS:
        assert f'id="task--{task}"' in html and f'href="#task--{task}"' in html
        assert f'<h4 id="dis--small--{task}">' in html and f'href="#dis--small--{task}"' in html
    assert html.count('<details class="example"') >= 20
    assert "sha256" in html and manifest()["models"]["bio-small"]["sha256"] in html


URL_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data", "background"}


def attribute_values(html: str, names: set[str]) -> list[str]:
    """The values of the named attributes of every element in the page."""
    found = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value or "" for name, value in attrs if name in names)

    Collector().feed(html)
    return found


def _study_with_metrics(metrics: dict[str, list[float]]) -> Study:
    """A hand-made study whose comparison holds the given metric rows (delta per task)."""
    arms = {"g": Arm("g", "r", "g", {"family": "general"}), "b": Arm("b", "r", "b", {"family": "biomedical"})}
    comparison, results = [], []
    for metric, deltas in metrics.items():
        for i, delta in enumerate(deltas):
            comparison.append({"pair": "p", "task": f"t{i}", "metric": metric, "baseline": 0.5, "candidate": 0.5 + delta,
                               "delta": delta, "ci_low": delta - 0.05, "ci_high": delta + 0.05, "p_value": 0.001,
                               "test": "mcnemar_exact", "n_paired": 100, "b": 10, "c": 3, "p_holm": 0.004})
            if metric not in ("accuracy", "hallucination_rate"):  # as metrics.py reports a permutation test
                comparison[-1].update(test="paired_permutation", b=None, c=None)
            results += [{"model": m, "task": f"t{i}", "metric": metric, "value": v, "ci_low": v - 0.1,
                         "ci_high": v + 0.1, "n": 100} for m, v in (("g", 0.5), ("b", 0.5 + delta))]
    return Study("t", [Run("r", Path("r"), {})], arms, [ArmPair("p", "g", "b")], {}, pl.DataFrame(),
                 pl.DataFrame(results), pl.DataFrame(comparison))


def test_html_draws_whatever_metric_rows_exist():
    study = _study_with_metrics({"accuracy": [-0.2, 0.1], "rougeL": [-0.1, -0.05], "macro_f1": [0.02, 0.03],
                                 "hallucination_rate": [0.15, 0.1]})
    html = render_html(study)
    forest = html[html.index('<svg id="forest-0"'):]
    forest = forest[: forest.index("</svg>")]
    assert forest.count('<g class="row">') == 8
    for metric in ("rougeL", "macro_f1", "hallucination_rate (lower is better)"):
        assert f">{metric}</text>" in forest
    assert 'id="bars--hallucination_rate"' in html and 'id="bars--rougeL"' in html
    quality = html.index("Accuracy and other quality scores")
    failures = html.index("Hallucination and failure measures")
    assert quality < html.index('id="bars--macro_f1"') < failures < html.index('id="bars--hallucination_rate"')


def test_headline_counts_tasks_and_reads_failure_measures_the_right_way_round():
    study = _study_with_metrics({"accuracy": [-0.2, -0.1, 0.05], "hallucination_rate": [0.1, 0.2, -0.1]})
    text = headline("b (biomedical)", "g (general)", tally_pair(study.comparison))
    assert text == ("Compared with g (general), b (biomedical) scores lower on 2 of 3 tasks (2 significantly) and "
                    "higher on 1 (1 significantly); it hallucinates more often on 2 of 3 tasks (2 significantly) "
                    "and less often on 1 (1 significantly).")
    row = study.comparison.row(3, named=True)  # hallucination_rate up by 0.1, significant
    assert verdict(row, "general", "biomedical") == "general better"


def test_results_carry_the_parser_and_scorer_versions(built_run):
    results = pl.read_csv(built_run / "results.csv")
    assert results.columns[:7] == ["model", "task", "metric", "value", "ci_low", "ci_high", "n"]
    from edgeeval import kinds

    for row in results.select("task", "parser_version", "scorer_version").unique().iter_rows(named=True):
        current = kinds.get(manifest()["tasks"][row["task"]]["kind"]).version
        assert str(row["parser_version"]) == current["parser_version"]
        assert str(row["scorer_version"]) == current["scorer_version"]


def test_rescoring_under_another_parser_version_says_so(copy_run):
    run = copy_run("old-parser")
    meta = json.loads((run / "manifest.json").read_text())
    meta["tasks"]["mednli"]["parser_version"] = "0"
    (run / "manifest.json").write_text(json.dumps(meta))
    build_report(run)
    report = (run / "report.md").read_text()
    assert "task mednli (old-parser): recorded under another version" in report
    assert "parser 0 → 1" in report
    assert "task medqa" not in report.split("recorded under another version")[0].rsplit("\n", 1)[-1]


# --- provenance ---------------------------------------------------------------------------------------

CPU_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
            "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
            "OPENMP = 1 | REPACK = 1 | ")


def test_the_llama_cpp_column_names_the_build_and_the_backend_in_a_few_words(run_dir):
    meta = json.loads((run_dir / "manifest.json").read_text())
    for info in meta["engine"].values():
        info.update(backend="llama", system_info=CPU_INFO, llama_cpp={"version": "0.25.3", "commit": "0c1e570"})
    (run_dir / "manifest.json").write_text(json.dumps(meta))
    text = build_report(run_dir).read_text()
    assert "| 0c1e570 (ggml 0.25.3), CPU AVX512+AMX |" in text and "SSSE3" not in text
    assert json.loads((run_dir / "manifest.json").read_text())["engine"]["bio-small"]["system_info"] == CPU_INFO


@pytest.mark.parametrize("system_info, expected", [
    ("CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | "
     "F16C = 1 | FMA = 1 | OPENMP = 1 | ", "CUDA + CPU AVX2"),
    ("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | ACCELERATE = 1 | ",
     "Metal + CPU NEON"),
    ("CPU : SSE3 = 1 | SSSE3 = 1 | LLAMAFILE = 1 | ", "CPU SSE3"),
    ("fake engine (no model)", "fake engine (no model)"),
])
def test_backend_summary(system_info, expected):
    assert backend_summary(system_info) == expected
