"""The "suite" section (issue 23): shared prompt prefixes decoded once, measured on every generation task's
bundled sample with the runner's own prompts, and where the study's prompt tokens go.

Per model and task, one child answers the task's prompts three ways on one loaded model:
- `one`: one prompt at a time (`--parallel 1`: the main context keeps the last prompt's prefix);
- `before`: batched as `--parallel auto` did before sharing: the data's order, every prompt decoded whole;
- `after`: batched with sharing: the runner's order (engine/sharing.py `share_order`), a shared prefix decoded
  once into the holder sequence and copied to every prompt that starts with it.
The prompt tokens decoded per example and the wall time of each, and whether `after`'s answers equal `one`'s
(with the first character that differs). LongHealth runs in both document orders; a study-shaped patient (20
questions, documents of CLUE's size for this context) shows what the patient order gives at the study's
sizes, which the bundled three-patient sample cannot. The layout table measures which cache layout is faster
for batched generation with and without a shared prefix. The 8B-pair projection is recomputed with the
measured reuse, CLUE's repetitions included.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ROOT, first_difference, say
from .jsonable import optional

GENERATION_TASKS = ("case_challenges", "jama_challenges", "medqa", "medmcqa", "pubmedqa", "mednli", "meqsum",
                    "problem_summary", "medisumqa", "medisumcode", "longhealth_t1", "longhealth_t2", "longhealth_t3")
FEW_SHOT_TASKS = ("mednli", "meqsum", "problem_summary", "medisumqa", "medisumcode")
LONGHEALTH = ("longhealth_t1", "longhealth_t2", "longhealth_t3")
STUDY_SHAPE = "longhealth_study_shape"
"""A LongHealth task written by the benchmark: one patient, 20 questions (as LongHealth's patients have), the
documents as long as the context allows; asked once (the repetitions only repeat the same structure)."""
CLUE_REPEATS = {"longhealth_t1": 5, "longhealth_t2": 5, "longhealth_t3": 5}
QWEN_TASKS = ("mednli", "meqsum")
LONGHEALTH_LIMIT = 4
"""LongHealth questions per task (each asked 5 times): the first patient's four, so patient order has a group to share."""
LAYOUT_SEQS = (1, 2, 4, 8, 16)
LAYOUT_PREFIXES = (0, 512, 2048, 6144)


@dataclass(kw_only=True)
class Variant:
    seconds: float
    prompt_tokens: int
    decoded: int
    generated: int
    texts: list[str | None]

    @property
    def decoded_per_example(self) -> float:
        return self.decoded / max(1, len(self.texts))


@dataclass(kw_only=True)
class TaskSuite:
    model: str
    task: str
    examples: int
    parallel: int
    max_tokens: int
    prompt_tokens_per_example: float
    decoded_per_example: dict[str, float]  # one, before, after
    seconds: dict[str, float]
    reuse_factor: float  # before's decoded tokens over after's
    speedup: float  # before's wall time over after's
    speedup_vs_one: float  # one's wall time over after's
    same_as_one: int
    differ: list[dict[str, Any]] = field(default_factory=list)
    load_average: float = 0.0


@dataclass(kw_only=True)
class LayoutCell:
    layout: str
    n_seq: int
    prefix: int
    seconds: float
    decoded: int


@dataclass(kw_only=True)
class RunVariant:
    """One `edgeeval run` of the demo pair on RUN_TASKS: its options and each model's seconds answering (the
    engine's own timing, from the manifest) and what --repack it loaded with."""

    options: list[str]
    seconds: dict[str, float]
    repack: dict[str, Any]
    wall_seconds: float
    reused: str


@dataclass(kw_only=True)
class SuiteSection:
    tasks: list[TaskSuite]
    layouts: list[LayoutCell] = field(default_factory=list)
    layout_model: str | None = optional()
    runs: dict[str, RunVariant] = field(default_factory=dict)
    projection: dict[str, Any] = field(default_factory=dict)
    max_tokens_cap: int = 0
    limit: int = 0
    notes: str = ""


# --- the child side ------------------------------------------------------------------------------------------

def child_suite(model, spec) -> dict[str, Any]:
    """The three ways of answering one task's prompts (see the module doc), on one loaded model."""
    prompts, order = spec["prompts"], spec["order"]
    max_tokens, stop, n_parallel = spec["max_tokens"], spec["stop"], spec["n_parallel"]
    chunk = 4 * n_parallel  # as the runner's engine calls (run/answering.py)
    model.generate("warm up", 2, [])
    out: dict[str, Any] = {}
    for name in ("one", "before", "after"):
        model.streams.close()  # every variant makes its own batched context, and starts without a held prefix
        model.cache.set_prefix([])
        model.streams.share = name == "after"
        ordered = order if name == "after" else list(range(len(prompts)))
        before = dict(model.counters)
        began = time.perf_counter()
        texts: dict[int, str | None] = {}
        if name == "one":
            for i in ordered:
                texts[i] = model.generate(prompts[i], max_tokens, stop).text
        else:
            for start in range(0, len(ordered), chunk):
                part = ordered[start : start + chunk]
                gens = model.generate_many([prompts[i] for i in part], max_tokens, stop, n_parallel=n_parallel)
                texts.update({i: g.text for i, g in zip(part, gens)})
        seconds = time.perf_counter() - began
        out[name] = {"seconds": seconds, "texts": [texts[i] for i in range(len(prompts))],
                     **{key: int(model.counters[key] - before[key])
                        for key in ("prompt_tokens", "prompt_tokens_decoded", "generated_tokens")}}
    out["near_ties"] = {str(i): near_tie(model, prompts[i], out["after"]["texts"][i] or "", max_tokens)
                        for i in range(len(prompts)) if out["one"]["texts"][i] != out["after"]["texts"][i]}
    return out


def near_tie(model, prompt: str, other: str, max_tokens: int) -> dict[str, Any]:
    """Where one-at-a-time greedy parts from `other` (the shared batched answer): the step, the one-at-a-time logits'
    margin between its top two tokens there, and whether its second token is the one `other` went on with."""
    import numpy as np

    want = other.encode()
    model.feed_prompt(model.tokenize(prompt))
    text = b""
    for step in range(max_tokens):
        row = model.logits(-1)
        first, second = (int(t) for t in np.argsort(row)[-2:][::-1])
        ended = model.is_end(first)
        if (ended and want == text) or (not ended and want.startswith(text + model.piece(first))):
            if ended:
                break
            text += model.piece(first)
            model.append_tokens([first])
            continue
        goes_on = want == text if model.is_end(second) else want.startswith(text + model.piece(second))
        return {"step": step, "margin": float(row[first] - row[second]), "second_is_other": bool(goes_on)}
    return {"step": None, "margin": None, "second_is_other": None}


def child_layouts(model, spec) -> dict[str, Any]:
    """Batched generation of n sequences, each a shared prefix of p tokens plus 32 of its own, 16 tokens
    generated each, in each cache layout: seconds per cell (the prefix's decode included)."""
    sentence = "The patient was admitted with fever and cough; the chest film showed an infiltrate. "
    per_sentence = len(model.vocabulary.tokenize(sentence * 8)) / 8
    cells = []
    for layout in ("streams", "unified"):
        model.streams.close()
        model.streams.layout = layout
        model.streams.share = True
        model.generate_many(["warm up a", "warm up b"], 2, [], n_parallel=2)
        for prefix in spec["prefixes"]:
            shared = sentence * round(prefix / per_sentence)  # about `prefix` tokens
            for n_seq in spec["sizes"]:
                prompts = [shared + f" Question {k}: " + "what is the most likely diagnosis here? " * 3
                           for k in range(n_seq)]
                model.streams.held = []
                model.streams.close()
                before = model.counters["prompt_tokens_decoded"]
                began = time.perf_counter()
                model.generate_many(prompts, 16, [], n_parallel=n_seq, ignore_eos=True)
                cells.append({"layout": layout, "n_seq": n_seq, "prefix": prefix,
                              "seconds": time.perf_counter() - began,
                              "decoded": int(model.counters["prompt_tokens_decoded"] - before)})
    return {"cells": cells}


# --- the parent side -----------------------------------------------------------------------------------------

def study_shape_project(dest: Path, n_questions: int = 20, doc_chars: int = 8000) -> Path:
    """A copy of the repository's project (models.toml, prompts, tasks) where LongHealth is asked in patient order,
    plus the study-shaped patient's task (synthetic text: no real patient)."""
    for name in ("prompts", "benchmarks/clinical"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "models.toml", dest / "models.toml")
    tasks = dest / "benchmarks" / "clinical"
    for task in LONGHEALTH:
        text = (tasks / f"{task}.toml").read_text()
        (tasks / f"{task}_patient.toml").write_text(
            text.replace('format = "longhealth"', 'format = "longhealth"\ndocument_order = "patient"'))
    sentence = ("Day {d}: the patient reported night sweats and weight loss; CT showed enlarged lymph nodes in "
                "the neck and groin; labs: haemoglobin {h} g/dl, LDH {l} U/l; R-CHOP cycle {c} given. ")
    texts = {f"text_{t}": "".join(sentence.format(d=d, h=10 + d % 5, l=200 + 7 * d, c=1 + d % 6)
                                  for d in range(t * 200, t * 200 + 200))[:doc_chars // 3] for t in range(3)}
    questions = [{"No": q + 1, "question": f"What was the LDH on day {7 * q + 3}?",
                  **{f"answer_{k}": f"{200 + 7 * (7 * q + 3) + 7 * j} U/l" for j, k in enumerate("abcde")},
                  "correct": f"{200 + 7 * (7 * q + 3)} U/l", "answer_location": {"text_0": {"start": [0.1], "end": [0.2]}}}
                 for q in range(n_questions)]
    data = {"patient_99": {"patient_id": "patient_99", "name": "Test Patient", "birthday": "1960-01-01",
                           "diagnosis": "Diffuse large B-cell lymphoma", "texts": texts, "questions": questions}}
    (tasks / "data" / "longhealth_study_shape.json").write_text(json.dumps(data))
    text = (tasks / "longhealth_t1.toml").read_text()
    text = text.replace("repeats = 5", "repeats = 1").replace(
        "longhealth_sample.json", "longhealth_study_shape.json").replace(
        'format = "longhealth"', 'format = "longhealth"\ndocument_order = "patient"')
    (tasks / f"{STUDY_SHAPE}.toml").write_text(text)
    return dest


def project_prompts(project_root: Path, model: str, task: str, limit: int | None) -> tuple[list[str], list[str]]:
    """The runner's prompts for this GGUF (a configured model of the project) and task, in the data's order."""
    from edgeeval.cli import engine_factory
    from edgeeval.config.model_files import resolve_model_path
    from edgeeval.config.models import load_models_config
    from edgeeval.engine import EngineSettings
    from edgeeval.run.planning import prepare_model, prepare_task
    from edgeeval.run.runner import plan_model

    project = load_models_config(project_root / "models.toml")
    name = next(n for n in project.config.models if _resolves_to(project, n, model, resolve_model_path))
    settings = EngineSettings()
    prepared = prepare_model(project, name, settings)
    # As the runner plans: a context rule that counts the model's own tokens gets its vocabulary.
    [(_, units, _)] = plan_model(prepared, [prepare_task(project, task, None, limit)], settings, engine_factory("llama"))
    units = [u for u in units if u.failure is None]
    return [u.prompt for u in units], [u.example.unit_id for u in units]


def _resolves_to(project, name: str, model: str, resolve) -> bool:
    from edgeeval.errors import EdgeevalError

    try:
        return bool(resolve(project, name).resolve() == Path(model).resolve())
    except EdgeevalError:
        return False


def measure_task(model: str, project_root: Path, task: str, args, run_child) -> TaskSuite:
    from edgeeval.config.gguf import read_gguf_metadata
    from edgeeval.engine.batching import auto_parallel
    from edgeeval.engine.memory import kv_cache_bytes
    from edgeeval.engine.sharing import share_order

    limit = None if task == STUDY_SHAPE else LONGHEALTH_LIMIT if task.startswith("longhealth") else args.suite_limit
    prompts, ids = project_prompts(project_root, model, task, limit)
    spec = task_max_tokens(project_root, task)
    max_tokens = min(spec[0], args.suite_max_tokens)
    parallel = auto_parallel(os.path.getsize(model), kv_cache_bytes(read_gguf_metadata(model).metadata, 4096),
                             args.threads)
    n_ctx = 8192 if task == STUDY_SHAPE else 4096
    say(Path(model).name, f"suite: {task} ({len(prompts)} prompts, --parallel auto = {parallel}, "
                          f"load {os.getloadavg()[0]:.1f})")
    res = run_child({"model": model, "threads": args.threads, "n_ctx": n_ctx, "kind": "suite", "prompts": prompts,
                     "order": share_order(prompts), "max_tokens": max_tokens, "stop": spec[1],
                     "n_parallel": parallel})
    variants = {name: Variant(seconds=res[name]["seconds"], prompt_tokens=res[name]["prompt_tokens"],
                              decoded=res[name]["prompt_tokens_decoded"], generated=res[name]["generated_tokens"],
                              texts=res[name]["texts"]) for name in ("one", "before", "after")}
    one, before, after = variants["one"], variants["before"], variants["after"]
    differ = [{"unit": ids[i], "first_difference": first_difference(a or "", b or ""), "one": a, "after": b,
               **res["near_ties"].get(str(i), {})} for i, (a, b) in enumerate(zip(one.texts, after.texts)) if a != b]
    return TaskSuite(model=Path(model).name, task=task, examples=len(prompts), parallel=parallel, max_tokens=max_tokens,
                     prompt_tokens_per_example=before.prompt_tokens / max(1, len(prompts)),
                     decoded_per_example={k: v.decoded_per_example for k, v in variants.items()},
                     seconds={k: v.seconds for k, v in variants.items()},
                     reuse_factor=before.decoded / max(1, after.decoded), speedup=before.seconds / after.seconds,
                     speedup_vs_one=one.seconds / after.seconds, same_as_one=len(prompts) - len(differ),
                     differ=differ, load_average=os.getloadavg()[0])


def task_max_tokens(project_root: Path, task: str) -> tuple[int, list[str]]:
    from edgeeval.config.tasks import load_task

    spec = load_task(project_root / "benchmarks" / "clinical" / f"{task}.toml")
    return spec.max_tokens, list(spec.stop)


def measure_suite(args, models: list[str], qwen: str | None, run_child) -> SuiteSection:
    """Every generation task on the demo models (LongHealth: task 1 in both orders, LONGHEALTH_LIMIT questions of the
    first patient with their repetitions; tasks 2 and 3 with --suite-longhealth-all), the study-shaped patient on
    the first demo model; MedNLI and MeQSum on Qwen 1.5B when it is assembled; the layout table on the first demo
    model."""
    section = SuiteSection(tasks=[], max_tokens_cap=args.suite_max_tokens, limit=args.suite_limit)
    longhealth = LONGHEALTH if args.suite_longhealth_all else LONGHEALTH[:1]
    tasks = [t for t in GENERATION_TASKS if t not in LONGHEALTH] + [
        t for lh in longhealth for t in (lh, f"{lh}_patient")]
    plan = [(m, t) for m in models for t in tasks] + [(models[0], STUDY_SHAPE)]
    if qwen:
        plan += [(qwen, t) for t in QWEN_TASKS]
    with tempfile.TemporaryDirectory(prefix="edgeeval-suite-") as tmp:
        project = study_shape_project(Path(tmp))
        for model, task in plan:
            section.tasks.append(measure_task(model, project, task, args, run_child))
    if not args.skip_runs:
        section.runs = measure_runs(args)
    if not args.skip_layouts:
        say(Path(models[0]).name, "suite: cache layouts")
        res = run_child({"model": models[0], "threads": args.threads, "n_ctx": 8192, "kind": "layouts",
                         "prefixes": list(LAYOUT_PREFIXES), "sizes": list(LAYOUT_SEQS), "n_seq_max": 32})
        section.layouts = [LayoutCell(**cell) for cell in res["cells"]]
        section.layout_model = Path(models[0]).name
    return section


RUN_TASKS = ("mednli", "meqsum")
RUN_VARIANTS = {"parallel_1": ["--parallel", "1", "--repack", "auto"],
                "repack_on": ["--repack", "on"], "repack_off": ["--repack", "off"], "auto": []}
"""The CLI runs: the default (`auto`: --parallel auto, --repack auto, measured in a fresh cache so the calibration is
paid), the same with repacking forced on and off, and --parallel 1."""


def measure_runs(args) -> dict[str, RunVariant]:
    """The demo pair on the bundled MedNLI and MeQSum samples (whole, the tasks' own max_tokens), as a user runs it."""
    import subprocess
    import sys

    runs = {}
    with tempfile.TemporaryDirectory(prefix="edgeeval-suite-runs-") as tmp:
        for name, options in RUN_VARIANTS.items():
            out, cache = Path(tmp) / name, Path(tmp) / f"cache-{name}"
            cmd = [sys.executable, "-m", "edgeeval.cli", "run", "--pair", "demo", *[a for t in RUN_TASKS for a in ("--task", t)],
                   "--threads", str(args.threads), "--quiet", "--out", str(out), *options]
            say("demo pair", f"suite: edgeeval run {' '.join(cmd[4:])} (load {os.getloadavg()[0]:.1f})")
            began = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "EDGEEVAL_CACHE_DIR": str(cache)},
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - began
            engine = json.loads((out / "manifest.json").read_text())["engine"]
            runs[name] = RunVariant(options=options, seconds={m: e["seconds"] for m, e in engine.items()},
                                    repack={m: e.get("repack") for m, e in engine.items()}, wall_seconds=wall,
                                    reused=reused_share(list(engine.values())))
    return runs


def reused_share(engines: list[dict[str, Any]]) -> str:
    """As the report's run table says it: prompt tokens decoded of those in the prompts."""
    tokens = [e.get("tokens") or {} for e in engines]
    total, decoded = sum(t.get("prompt_tokens", 0) for t in tokens), sum(t.get("prompt_tokens_decoded", 0) for t in tokens)
    return f"{decoded:,} decoded of {total:,} prompt tokens ({100 * (1 - decoded / max(1, total)):.0f}% reused)"


def suite_fields(section: SuiteSection, qwen: str | None, projection: dict[str, Any]) -> dict[str, float]:
    """The summary line's keys: reuse factors (prompt tokens decoded before over after), the few-shot speed-up on
    Qwen 1.5B's MedNLI (the demo models' where Qwen is not assembled), and the share of answers equal to one at a
    time; factors are pooled over models (tokens summed), the worst model's where a goal is a floor."""
    def pooled(rows: list[TaskSuite]) -> float:
        before = sum(r.decoded_per_example["before"] * r.examples for r in rows)
        after = sum(r.decoded_per_example["after"] * r.examples for r in rows)
        return before / max(1.0, after)

    rows = section.tasks
    fewshot = min(pooled([r for r in rows if r.task == t and r.model == m])
                  for m in {r.model for r in rows} for t in FEW_SHOT_TASKS
                  if any(r.task == t and r.model == m for r in rows))
    study = [r for r in rows if r.task == STUDY_SHAPE]
    qwen_name = Path(qwen).name if qwen else None
    mednli = [r for r in rows if r.task == "mednli" and (qwen_name is None or r.model == qwen_name)]
    equal = sum(r.same_as_one for r in rows) / max(1, sum(r.examples for r in rows))
    fields = {"fewshot_reuse_factor": fewshot, "longhealth_patient_reuse_factor": min(r.reuse_factor for r in study),
              "suite_reuse_factor": projection["suite_reuse_factor"],
              "fewshot_speedup": min(r.speedup for r in mednli), "answers_equal_share": equal}
    runs = section.runs
    if runs:
        models = list(runs["auto"].seconds)
        fields["repack_auto_vs_best"] = min(
            min(runs["repack_on"].seconds[m], runs["repack_off"].seconds[m]) / runs["auto"].seconds[m] for m in models)
        fields["parallel_auto_vs_1"] = min(runs["parallel_1"].seconds[m] / runs["auto"].seconds[m] for m in models)
    return fields


def projection_with_sharing(section: SuiteSection, projection: dict[str, Any]) -> dict[str, Any]:
    """The 8B pair's suite (benchmarks/scale's sizes, CLUE's repetitions on LongHealth) with each task's prompt tokens
    divided by its measured reuse factor (LongHealth: the study-shaped patient's, in patient order; the rest:
    the demo and Qwen models' pooled factor on the task's sample), beside the projection without sharing."""
    paper = json.loads((ROOT / "benchmarks" / "scale" / "results.json").read_text())["paper"]
    factors: dict[str, float] = {}
    for task in paper["tasks"]:
        key = STUDY_SHAPE if task in LONGHEALTH else task
        rows = [r for r in section.tasks if r.task == key]
        before = sum(r.decoded_per_example["before"] * r.examples for r in rows)
        after = sum(r.decoded_per_example["after"] * r.examples for r in rows)
        factors[task] = before / max(1.0, after)
    tokens = {t: 2 * s["examples"] * s["prompt_tokens"] * CLUE_REPEATS.get(t, 1) for t, s in paper["tasks"].items()}
    total, shared = sum(tokens.values()), sum(tokens[t] / factors[t] for t in tokens)
    out = {"reuse_factor_per_task": factors, "prompt_tokens_with_repeats": total,
           "prompt_tokens_decoded_with_sharing": shared, "suite_reuse_factor": total / shared}
    if projection:
        pp, tg, gain = projection["prompt_tokens_per_s"], projection["gen_tokens_per_s"], projection["parallel_auto_gain"]
        repeats_generated = sum((CLUE_REPEATS.get(t, 1) - 1) * 2 * s["examples"] for t, s in paper["tasks"].items())
        per_example_gen = projection["generated_tokens"] / max(1.0, projection["examples"])
        generated = projection["generated_tokens"] + repeats_generated * per_example_gen
        out.update({"hours_parallel_auto_without_sharing": (total / pp + generated / (tg * gain)) / 3600,
                    "hours_parallel_auto_with_sharing": (shared / pp + generated / (tg * gain)) / 3600,
                    "hours_today_as_projected_before": projection.get("hours_parallel_auto"),
                    "generated_tokens_with_repeats": generated})
    return out
