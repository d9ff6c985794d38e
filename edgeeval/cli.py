"""The `edgeeval` command line: demo, models, tasks, run, report, compare."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import edgeeval
from edgeeval.config import Project, load_models_config, load_task, resolve_model_path
from edgeeval.engine import EngineSettings
from edgeeval.errors import ConfigError, EdgeevalError

DEMO_PAIR = "demo"
DEMO_TASK = "case_challenges"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MAX_PARALLEL = EngineSettings.n_seq_max


def default_config() -> Path:
    """./models.toml when there is one, else the one beside the edgeeval checkout."""
    local = Path("models.toml")
    return local if local.exists() else PACKAGE_ROOT / "models.toml"


def load_project(args) -> Project:
    return load_models_config(Path(args.config) if args.config else default_config(), args.models_dir)


def engine_factory(backend: str):
    from edgeeval.engine.worker import WorkerEngine

    def make(path: Path, settings: EngineSettings):
        return WorkerEngine(path, settings)

    return make


def parse_data_overrides(items: list[str]) -> dict[str, Path]:
    overrides = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise ConfigError(f"--data expects TASK=PATH, got '{item}'")
        overrides[task] = Path(path).expanduser()
    return overrides


def cmd_run(args, pair: str | None = None, tasks: list[str] | None = None) -> int:
    from edgeeval.report import build_report
    from edgeeval.planning import prepare_task
    from edgeeval.runner import run_models

    project = load_project(args)
    pair = pair or args.pair
    if pair not in project.config.pairs:
        known = ", ".join(project.config.pairs) or "none"
        raise ConfigError(f"{project.config_path}: unknown pair '{pair}' (pairs: {known})")
    tasks = tasks or args.task
    overrides = parse_data_overrides(getattr(args, "data", []) or [])
    unknown = set(overrides) - set(tasks)
    if unknown:
        raise ConfigError(f"--data names task(s) not being run: {', '.join(sorted(unknown))}")
    parallel = parse_parallel(args.parallel)
    draft = resolve_draft(project, args.draft) if getattr(args, "draft", None) else None
    prepared = [prepare_task(project, t, overrides.get(t), args.limit, args.max_tokens, args.mode) for t in tasks]
    spec = project.config.pairs[pair]
    out = Path(args.out) if args.out else Path("runs") / pair
    settings = EngineSettings(n_threads=args.threads, seed=args.seed, backend=args.engine,
                              speculative=args.speculative, draft_model=draft,
                              fake_delay_s=float(os.environ.get("EDGEEVAL_FAKE_DELAY_S", "0")))
    warn_if_busy(args.engine)
    started = time.perf_counter()
    summary = run_models(project, pair, [spec.baseline, spec.candidate], prepared, out, settings,
                         engine_factory(args.engine), progress=not args.quiet, parallel=parallel,
                         retry_errors=args.retry_errors)
    report = build_report(out, seed=args.seed, no_text=args.no_text)
    wall = time.perf_counter() - started
    rate = f", {summary.done / summary.seconds:.2f} examples/s" if summary.done and summary.seconds else ""
    print(f"{summary.done} examples generated, {summary.skipped} already done, {summary.errors} errors; "
          f"{wall:.1f} s{rate}")
    print(f"report: {report.resolve()}")
    return 0


def parse_parallel(value: str) -> int | str:
    """--parallel: 'auto' (the rule of engine/batching.py, per model) or a number of sequences."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PARALLEL:
        raise ConfigError(f"--parallel must be 'auto' or between 1 and {MAX_PARALLEL} (got {value})")
    return number


def resolve_draft(project: Project, name: str) -> str:
    """--draft: a models.toml name or a GGUF path; read with edgeeval's own GGUF reader before any use."""
    from edgeeval.gguf_file import read_gguf_metadata

    path = resolve_model_path(project, name) if name in project.config.models else Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"--draft {name}: no such model in {project.config_path} and no such file")
    read_gguf_metadata(path)  # raises a one-line error for a file that is not a readable GGUF
    return str(path.resolve())


def warn_if_busy(backend: str) -> None:
    """One line on stderr when every CPU is already busy: llama.cpp's threads wait for each other at
    every step, so on shared cores a run can be many times slower than its share of the machine."""
    if backend != "llama" or not hasattr(os, "getloadavg"):
        return
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load >= cpus:
        print(f"edgeeval: warning: the machine is busy (load {load:.1f} on {cpus} CPUs); llama.cpp slows down "
              "badly on shared cores: stop the other work, or use --threads 1", file=sys.stderr)


def cmd_demo(args) -> int:
    args.config = args.config or str(PACKAGE_ROOT / "models.toml")
    args.out = args.out or "runs/demo"
    return cmd_run(args, pair=DEMO_PAIR, tasks=[DEMO_TASK])


def cmd_report(args) -> int:
    from edgeeval.report import build_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise EdgeevalError(f"{run_dir} is not an edgeeval run directory (no manifest.json)")
    out = Path(args.out) if args.out else None
    report = build_report(run_dir, seed=args.seed, no_text=args.no_text, out_dir=out)
    print(f"report: {report.resolve()}\nhtml: {report.with_name('report.html').resolve()}")
    return 0


def cmd_compare(args) -> int:
    from edgeeval.report import build_comparison, default_compare_dir

    out = Path(args.out) if args.out else default_compare_dir()
    report = build_comparison([Path(d) for d in args.run_dirs], out, seed=args.seed, no_text=args.no_text)
    print(f"report: {report.resolve()}\nhtml: {report.with_name('report.html').resolve()}")
    return 0


def cmd_models(args) -> int:
    from edgeeval.gguf_file import read_gguf_metadata, sha256_file

    project = load_project(args)
    failures = 0
    for name, spec in project.config.models.items():
        where = spec.path or f"package {spec.package} ({spec.file})"
        print(f"{name:24} {spec.family:10} {spec.chat_template:28} {where}")
        if not args.verify:
            continue
        try:
            path = resolve_model_path(project, name)
            info = read_gguf_metadata(path)
            sha = sha256_file(path)
        except EdgeevalError as exc:
            failures += 1
            print(f"    MISSING/INVALID: {exc}")
            continue
        ok = spec.sha256 is None or spec.sha256.lower() == sha
        failures += not ok
        template = "embedded" if info.chat_template else "none in file"
        print(f"    {path}\n    {info.architecture}, {info.quantization}, {info.size_bytes / 1e6:.0f} MB, "
              f"chat template in GGUF: {template}\n    sha256 {sha} {'OK' if ok else 'MISMATCH (expected ' + spec.sha256 + ')'}")
    return 1 if failures else 0


def cmd_tasks(args) -> int:
    from edgeeval.planning import TASKS_DIR, prepare_task

    project = load_project(args)
    for path in sorted((project.root / TASKS_DIR).glob("*.toml")):
        spec = load_task(path)
        task = prepare_task(project, spec.name, None, None)
        shots = f"{spec.few_shot.count}-shot" if spec.few_shot else "0-shot"
        print(f"{spec.name:17} {spec.kind:16} {spec.data.format:16} {len(task.examples):5} examples  {shots:7} "
              f"{spec.data.path}\n{'':17} metrics: {', '.join(spec.metrics)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="models.toml to read (default: ./models.toml)")
    common.add_argument("--models-dir", help="directory relative model paths resolve against "
                        "(default: $EDGEEVAL_MODELS_DIR or ~/models)")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--out", help="run directory (re-running the same command resumes it)")
    running.add_argument("--limit", type=int, help="first N examples of each task only")
    running.add_argument("--max-tokens", type=int, help="override the tasks' max new tokens")
    running.add_argument("--threads", type=int, default=0, help="CPU threads (default: physical cores)")
    running.add_argument("--seed", type=int, default=0, help="seed for the bootstrap (decoding is greedy)")
    running.add_argument("--mode", choices=["generate", "loglik"], default="generate",
                         help="generate: answers are generated and parsed (default); loglik: multiple-choice and "
                         "label tasks score every option by its log-probability, nothing is generated "
                         "(results go under TASK@loglik)")
    running.add_argument("--parallel", default="auto", metavar="N",
                         help="generate: decode N prompts together (continuous batching; faster on larger "
                         "models, answers may differ from one-at-a-time in the last bits, see README); "
                         "'auto' (default) picks N from the model's size, context and threads")
    running.add_argument("--speculative", choices=["auto", "lookup", "none"], default="none",
                         help="generate: draft tokens by prompt lookup and verify them in one decode (greedy "
                         "output up to near-ties): 'auto' for summary tasks, 'lookup' for every task, 'none' "
                         "(default; see benchmarks/speed/README.md for why)")
    running.add_argument("--draft", metavar="MODEL",
                         help="generate: a small model with the same vocabulary (models.toml name or GGUF path) "
                         "drafts for both models of the pair (draft-model speculative decoding)")
    running.add_argument("--retry-errors", action="store_true",
                         help="when resuming, do again the examples whose answer is an error record (a crash, "
                         "a timeout); by default a resumed run keeps them")
    running.add_argument("--engine", choices=["llama", "fake"], default="llama", help=argparse.SUPPRESS)
    running.add_argument("--quiet", action="store_true", help="no progress bar")
    running.add_argument("--no-text", action="store_true",
                         help="write reports and exports without prompt or answer text (records keep it)")

    parser = argparse.ArgumentParser(prog="edgeeval", description=edgeeval.__doc__)
    parser.add_argument("--version", action="version", version=f"edgeeval {edgeeval.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common, running], help="the whole pipeline on the bundled small models")
    demo.set_defaults(func=cmd_demo)
    models = sub.add_parser("models", parents=[common], help="list models.toml (--verify checks the files)")
    models.add_argument("--verify", action="store_true")
    models.set_defaults(func=cmd_models)
    tasks = sub.add_parser("tasks", parents=[common], help="list the tasks in benchmarks/clinical/")
    tasks.set_defaults(func=cmd_tasks)
    run = sub.add_parser("run", parents=[common, running], help="evaluate both models of a pair")
    run.add_argument("--pair", required=True)
    run.add_argument("--task", action="append", required=True, help="task name (repeatable)")
    run.add_argument("--data", action="append", default=[], metavar="TASK=PATH", help="real data file for a task")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", parents=[common], help="re-score a run directory and write the reports")
    report.add_argument("run_dir")
    report.add_argument("--seed", type=int, default=0, help="seed for the bootstrap")
    report.add_argument("--out", help="write the report files here instead of into the run directory")
    report.add_argument("--no-text", action="store_true",
                        help="leave every prompt and answer text out of the reports and exports (for sharing)")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="the same models across several runs side by side")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", help="where to write the comparison (default: ./compare-<timestamp>)")
    compare.add_argument("--seed", type=int, default=0, help="seed for the bootstrap")
    compare.add_argument("--no-text", action="store_true", help="leave every prompt and answer text out")
    compare.set_defaults(func=cmd_compare)
    return parser


def _interrupt(signum, frame):
    # SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so the worker is shut down too.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return args.func(args)
    except EdgeevalError as exc:
        print(f"edgeeval: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk where no closer message was given
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"edgeeval: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeeval: interrupted; finished examples are saved, re-run the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
