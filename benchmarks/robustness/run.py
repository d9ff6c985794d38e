"""Option order and quantization drift on real models (issue 22), from one command:

    python benchmarks/robustness/run.py --llama-quantize PATH [--work DIR] [--threads N] [--skip-qwen]

1. Position bias: the demo pair and the Qwen2.5-Coder pair (`make models-extra`) on the bundled case challenges
   and MedQA sample, every item under every cyclic rotation of its options (`--permute cyclic`), in loglik and in
   generate mode: each model's most-chosen letter and its share, the chosen-letter test, consistency, RStd, and
   in loglik mode raw against PriDe-debiased accuracy.
2. Drift: the demo's Gemma 3 270M (Q4_K_M) against its own requantized variants (`llama-quantize
   --allow-requantize`, built from the same llama.cpp sources as llama-cpp-python: Q4_K_M -> Q3_K_M and -> Q2_K),
   each run as the same models.toml entry in the same pair, then `edgeeval compare`: flips both ways, agreement,
   KL divergence per answer, and whether the pair's verdict holds. SmolLM2 is the same file in every run: its row
   is the control (nothing may move).

Writes benchmarks/robustness/results.json and prints the summary line. Every run is an `edgeeval` command of its
own (the CLI a user types), with the same --threads; nothing else should run meanwhile (two llama.cpp processes
on two cores slow each other down by orders of magnitude)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from edgeeval.config.model_files import resolve_model_path  # noqa: E402
from edgeeval.config.models import load_models_config  # noqa: E402
from edgeeval.report.study import study_from_run, study_from_runs  # noqa: E402

TASKS = ("case_challenges", "medqa")
MODES = ("loglik", "generate")
PAIRS = {"demo": ("gemma3-270m", "smollm2-135m-instruct"),
         "qwen-speed": ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")}
VARIANTS = ("Q3_K_M", "Q2_K")
DRIFTED = "gemma3-270m"


def edgeeval(*args: str) -> float:
    """Runs `edgeeval ARGS` from the repository root; returns its wall time."""
    command = [str(Path(sys.executable).with_name("edgeeval")), *args]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def run_pair(pair: str, mode: str, out: Path, threads: int, config: Path | None = None, limit: int | None = None) -> float:
    extra = (["--config", str(config)] if config else []) + (["--limit", str(limit)] if limit else [])
    return edgeeval("run", "--pair", pair, *[a for t in TASKS for a in ("--task", t)], "--mode", mode,
                    "--permute", "cyclic", "--threads", str(threads), "--quiet", "--out", str(out), *extra)


def records(frame: pl.DataFrame) -> list[dict]:
    return json.loads(frame.write_json())


def bias_stage(work: Path, threads: int, pairs: list[str], limits: dict[tuple[str, str], int]) -> dict:
    """`limits`: (pair, mode) -> the first N items of each task only (the 1.5B generating every rotation of every
    item takes the better part of an hour on two cores)."""
    found: dict = {"runs": [], "bias": [], "rotations": [], "accuracy": []}
    for pair in pairs:
        for mode in MODES:
            limit = limits.get((pair, mode))
            out = work / (f"bias-{pair}-{mode}" + (f"-limit{limit}" if limit else ""))
            seconds = run_pair(pair, mode, out, threads, limit=limit)
            study = study_from_run(out)
            found["runs"].append({"pair": pair, "mode": mode, "limit": limit, "run_dir": str(out), "seconds": round(seconds, 1),
                                  "units": study.scored.height})
            found["bias"] += records(study.robustness.bias)
            found["rotations"] += records(study.robustness.rotations.drop("prior"))
            found["accuracy"] += records(study.results.filter(pl.col("metric") == "accuracy")
                                         .select("model", "task", "value", "ci_low", "ci_high", "n"))
    return found


def requantize(quantize: Path, source: Path, kind: str, work: Path) -> Path:
    target = work / f"gemma-3-270m-{kind.lower()}.gguf"
    if not target.exists():
        subprocess.run([str(quantize), "--allow-requantize", str(source), str(target), kind], check=True,
                       stdout=subprocess.DEVNULL)
    return target


def variant_config(work: Path, kind: str, path: Path) -> Path:
    """The built-in models.toml with the Gemma entry pointing at the variant: the same entry name in the same
    pair, so `compare` pairs the answers and the pair's verdict."""
    folder = work / f"config-{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "models.toml").read_text()
    start = text.index("[models.gemma3-270m]")
    end = text.index("[models.smollm2-135m-instruct]")
    entry = (f'[models.gemma3-270m]\npath = "{path}"\nsource = "llama-quantize --allow-requantize of the demo Gemma '
             f'(Q4_K_M) to {kind}"\nfamily = "general"\nchat_template = "prompts/chat/gemma.j2"\nn_ctx = 4096\n\n')
    (folder / "models.toml").write_text(text[:start] + entry + text[end:])
    return folder / "models.toml"


def drift_stage(work: Path, threads: int, quantize: Path, baseline_runs: dict[str, Path],
                modes: tuple[str, ...] = MODES) -> dict:
    project = load_models_config(ROOT / "models.toml")
    source = resolve_model_path(project, DRIFTED)
    found: dict = {"variants": {}, "drift": [], "verdicts": [], "notes": []}
    for kind in VARIANTS:
        path = requantize(quantize, source, kind, work)
        found["variants"][kind] = {"path": str(path), "bytes": path.stat().st_size}
    found["variants"]["Q4_K_M"] = {"path": str(source), "bytes": source.stat().st_size}
    for mode in modes:
        runs = [baseline_runs[mode]]
        for kind in VARIANTS:
            out = work / f"drift-{kind}-{mode}"
            found["variants"][kind][f"seconds_{mode}"] = round(run_pair("demo", mode, out, threads,
                                                                       variant_config(work, kind, Path(found["variants"][kind]["path"]))), 1)
            runs.append(out)
        study = study_from_runs(runs)
        found["drift"] += [{**row, "mode": mode} for row in records(study.drift)]
        found["verdicts"] += [{**row, "mode": mode} for row in records(study.verdicts)]
        found["notes"] += [note for note in study.notes if "verdict changes" in note]
    return found


def summary(bias: dict, drift: dict | None) -> dict:
    line: dict = {"position_top_share": {}, "pride_gain": {}, "consistency": {}, "drift_flips": {}, "kl_mean": {}}
    for row in bias["bias"]:
        share = row["top_share"]
        line["position_top_share"][f"{row['model']}|{row['task']}"] = [row["top"], None if share is None else round(share, 3)]
    for row in bias["rotations"]:
        key = f"{row['model']}|{row['task']}"
        line["consistency"][key] = round(row["consistency"], 3)
        if row["pride_gain"] is not None and row["pride_items"]:  # loglik mode only
            line["pride_gain"][key] = round(row["pride_gain"], 3)
    for row in (drift or {}).get("drift", []):
        variant = row["pair"].split(" vs ")[-1].split("-")[1] if "drift-" in row["pair"] else row["pair"]
        key = f"{row['pair'].split(':')[0]}|{variant}|{row['task']}"
        line["drift_flips"][key] = (row["right_to_wrong"] or 0) + (row["wrong_to_right"] or 0)
        if row["kl_items"]:
            line["kl_mean"][key] = round(row["kl_mean"], 4)
    return line


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "edgeeval-robustness")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-quantize", type=Path, help="llama.cpp's llama-quantize (without it: no drift stage)")
    parser.add_argument("--skip-qwen", action="store_true", help="the demo pair only (no `make models-extra`)")
    parser.add_argument("--stages", default="bias,drift", help="bias, drift or both (a stage left out keeps its "
                        "figures from the results.json already there; drift reads the demo pair's bias runs in --work)")
    parser.add_argument("--qwen-generate-limit", type=int, help="generate mode of the Qwen pair: the first N items "
                        "of each task only")
    parser.add_argument("--drift-modes", default=",".join(MODES), help="the modes the drift stage runs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    target = HERE / "results.json"
    previous = json.loads(target.read_text()) if target.exists() else {}
    started = time.perf_counter()
    pairs = ["demo"] + ([] if args.skip_qwen else ["qwen-speed"])
    limits = {("qwen-speed", "generate"): args.qwen_generate_limit} if args.qwen_generate_limit else {}
    bias = bias_stage(args.work, args.threads, pairs, limits) if "bias" in stages else previous.get("bias")
    drift = previous.get("drift")
    if "drift" in stages and args.llama_quantize:
        modes = tuple(m for m in args.drift_modes.split(",") if m)
        baseline = {mode: args.work / f"bias-demo-{mode}" for mode in modes}
        drift = drift_stage(args.work, args.threads, args.llama_quantize, baseline, modes)
    results = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads},
               "seconds": {**(previous.get("seconds") or {} if isinstance(previous.get("seconds"), dict) else {}),
                           args.stages: round(time.perf_counter() - started, 1)},
               "tasks": list(TASKS), "modes": list(MODES), "pairs": pairs, "summary": summary(bias, drift),
               "bias": bias, "drift": drift}
    target.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps(results["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
