"""Speed of edgeeval's engine, measured side by side with llama.cpp's own tools and lm-eval.

    python benchmarks/speed/run.py [--quick] [--model PATH ...] [--threads N] [--skip-lmeval]

Every number comes from one run on the same GGUF, items and thread count. Each measurement runs in
a fresh child process (so its peak RSS is its own): edgeeval's engine in `run.py --child ...`, the
peers as their users run them. Prints a table, writes benchmarks/speed/results.json, and ends with
one machine-readable line. See README.md beside this file for how the peers are built; the parts
are the modules beside this file (benchmarks/speed/__init__.py lists them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.speed.children import child_main  # noqa: E402
from benchmarks.speed.common import PPL_ARGS, RESULTS, SHOTS, machine  # noqa: E402
from benchmarks.speed.demo import match_rate, measure_model  # noqa: E402
from benchmarks.speed.inputs import default_models, load_items  # noqa: E402
from benchmarks.speed.jsonable import to_json  # noqa: E402
from benchmarks.speed.lmeval import compare_lmeval  # noqa: E402
from benchmarks.speed.peers import ensure_peers  # noqa: E402
from benchmarks.speed.profiles import divergence_profile, profile_misses  # noqa: E402
from benchmarks.speed.realistic import equality_on_demo_models, measure_realistic  # noqa: E402
from benchmarks.speed.report import (  # noqa: E402
    fields_line,
    print_divergence,
    print_misses,
    print_suite,
    print_table,
    read_results,
    summary_line,
    write_results,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter generations, fewer repeats (a few minutes)")
    parser.add_argument("--model", action="append",
                        help="GGUF to measure (repeatable); default: the bundled demo models")
    parser.add_argument("--threads", type=int, default=0, help="threads for every tool (default: physical cores)")
    parser.add_argument("--skip-lmeval", action="store_true", help="leave out lm-eval (it takes minutes per item)")
    parser.add_argument("--lmeval-items", type=int, default=0, help="items for lm-eval (default 2 quick, 3 full)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--realistic-only", action="store_true",
                        help="only the Qwen 1.5B section (speculative decoding, --parallel auto) and the demo models' "
                        "speculative = plain check")
    parser.add_argument("--parts", default="equality,lookup,draft,single,batched",
                        help="with --realistic-only: which of equality,lookup,draft,single,batched to measure")
    parser.add_argument("--spec-limit", type=int, default=8, help="examples per task for the speculative runs")
    parser.add_argument("--spec-max-tokens", type=int, default=128, help="cap on the tasks' max_tokens there")
    parser.add_argument("--n-draft", type=int, default=8,
                        help="tokens drafted per step (edgeeval and llama-speculative)")
    parser.add_argument("--misses", action="store_true",
                        help="only the profile behind the demo models' misses (merged into results.json as 'misses')")
    parser.add_argument("--divergence", action="store_true",
                        help="with --misses: only the profile of where multi-token decodes pick another greedy token")
    parser.add_argument("--flash-attn", action="store_true",
                        help="with --divergence: both paths with flash attention on (edgeeval leaves it off)")
    parser.add_argument("--rounds", type=int, default=5, help="with --misses: interleaved rounds")
    parser.add_argument("--suite", action="store_true",
                        help="only the 'suite' section: shared prompt prefixes on every generation task's sample "
                        "(merged into results.json; see suite.py)")
    parser.add_argument("--suite-limit", type=int, default=6, help="with --suite: examples per task (sample order)")
    parser.add_argument("--suite-max-tokens", type=int, default=24, help="with --suite: cap on the tasks' max_tokens")
    parser.add_argument("--suite-longhealth-all", action="store_true",
                        help="with --suite: LongHealth tasks 2 and 3 too (task 1 only by default)")
    parser.add_argument("--suite-no-qwen", action="store_true", help="with --suite: the demo models only")
    parser.add_argument("--skip-layouts", action="store_true", help="with --suite: leave out the cache layout table")
    parser.add_argument("--skip-runs", action="store_true",
                        help="with --suite: leave out the demo pair's CLI runs (--repack auto and --parallel checks)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(Path(args.child).read_text()))))
        return 0
    from edgeeval.engine.machine import default_threads

    args.threads = args.threads or default_threads()
    args.parts = set(args.parts.split(","))
    if args.misses and args.divergence:
        key = "divergence_flash_attn" if args.flash_attn else "divergence"
        return run_profile(args, key, divergence_profile, print_divergence)
    if args.misses:
        return run_profile(args, "misses", profile_misses, print_misses)
    if args.realistic_only:
        return run_realistic(args)
    if args.suite:
        return run_suite(args)
    return run_full(args)


def run_profile(args, key: str, measure, show) -> int:
    """One profile (`--misses`, `--misses --divergence`), merged into the results file under `key`."""
    results = read_results(args.out)
    profile = measure(args)
    results[key] = to_json(profile)
    write_results(args.out, results)
    show(profile)
    return 0


def run_realistic(args) -> int:
    # Merged into the results of the last full run (kept as they are), not written over them.
    results = read_results(args.out)
    if "equality" in args.parts:
        results["equality_demo_models"] = to_json(equality_on_demo_models(args))
    started = machine()
    fields = to_json(measure_realistic(args, results)) or {}
    if "realistic" in results:
        ended = dataclasses.replace(started, load_average_end=os.getloadavg())
        results["realistic"].update({"machine": to_json(ended), "threads": args.threads, "quick": args.quick})
    results["summary"] = {**results.get("summary", {}), **fields}
    write_results(args.out, results)
    print(fields_line(fields))
    return 0


def run_suite(args) -> int:
    """The 'suite' section, merged into the results of the last full run, with its keys in the summary line."""
    from benchmarks.speed.children import run_child
    from benchmarks.speed.inputs import extra_models
    from benchmarks.speed.suite import measure_suite, projection_with_sharing, suite_fields

    results = read_results(args.out)
    pair = None if args.suite_no_qwen else extra_models()
    qwen = pair[0] if pair else None
    started = machine()
    section = measure_suite(args, args.model or default_models(), qwen, run_child)
    section.projection = projection_with_sharing(section, results.get("realistic", {}).get("projection_8b", {}))
    fields = suite_fields(section, qwen, section.projection)
    results["suite"] = {**to_json(section), "machine": to_json(dataclasses.replace(
        started, load_average_end=os.getloadavg())), "threads": args.threads}
    results["summary"] = {**results.get("summary", {}), **fields}
    write_results(args.out, results)
    print_suite(section)
    print(fields_line(fields))
    return 0


def run_full(args) -> int:
    models_run = args.model or default_models()
    ensure_peers()
    items, shots = load_items()
    results = {"machine": to_json(machine()), "threads": args.threads, "quick": args.quick, "n_items": len(items),
               "shots": SHOTS, "perplexity_args": PPL_ARGS}
    models, match, lmeval = [], [], None
    with tempfile.TemporaryDirectory(prefix="edgeeval-speed-") as tmp:
        for model in models_run:
            models.append(measure_model(model, args, items, shots, Path(tmp)))
            match.append(match_rate(model, args))
        results.update({"models": to_json(models), "match": to_json(match)})
        if not args.skip_lmeval:
            lmeval = compare_lmeval(models_run, items, args, Path(tmp))
            results["lmeval"] = to_json(lmeval)
        realistic = to_json(measure_realistic(args, results)) or {}
    line = summary_line(models, lmeval)
    results["summary"] = {**dict(field.split("=") for field in line.split()), **realistic}
    write_results(args.out, results)
    print_table(models, lmeval, match)
    print(" ".join([line, fields_line(realistic)]) if realistic else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
