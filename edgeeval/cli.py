"""The `edgeeval` command line: demo, models, tasks, init, run, report, compare."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import edgeeval
from edgeeval.config.locations import BUILTIN_CONFIG, STARTER_ROOT, ConfigChoice, env_tasks_dirs, find_config
from edgeeval.config.model_files import resolve_model_path
from edgeeval.config.models import Project, load_models_config
from edgeeval.config.tasks import load_task
from edgeeval.data.permute import Permutation
from edgeeval.engine import EngineSettings
from edgeeval.engine.machine import usable_cpus
from edgeeval.errors import ConfigError, EdgeevalError

DEMO_PAIR = "demo"
DEMO_RETRIEVAL_PAIRS = ["demo-rag", "demo-rag-vs-gemma"]
"""`edgeeval demo --retrieval` adds the retrieval arm (SmolLM2 reading the bundled corpus) in these pairs."""
DEMO_TASK = "case_challenges"
MAX_PARALLEL = EngineSettings.n_seq_max


def load_project(args, choice: ConfigChoice | None = None) -> Project:
    """The models.toml found as locations.find_config says, with the task folders of
    $EDGEEVAL_TASKS_DIRS and then --tasks-dir (later ones win)."""
    choice = choice or find_config(args.config)
    tasks_dirs = (*env_tasks_dirs(), *(Path(d) for d in args.tasks_dir))
    return load_models_config(choice.path, args.models_dir, tasks_dirs)


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


def cmd_run(args, pairs: list[str] | None = None, tasks: list[str] | None = None) -> int:
    from edgeeval.report import build_report
    from edgeeval.run.planning import prepare_task
    from edgeeval.run.runner import run_models

    project = load_project(args)
    pairs = list(dict.fromkeys(pairs or args.pair))
    for pair in pairs:
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
    permute = Permutation.parse(args.permute) if getattr(args, "permute", None) else None
    prepared = [prepare_task(project, t, overrides.get(t), args.limit, args.max_tokens, args.mode, permute)
                for t in tasks]
    out = Path(args.out) if args.out else Path("runs") / "+".join(pairs)
    settings = EngineSettings(n_threads=args.threads, seed=args.seed, backend=args.engine,
                              speculative=args.speculative, draft_model=draft, use_extra_bufts=REPACK[args.repack],
                              share_prefixes=args.share_prefixes == "on",
                              fake_delay_s=float(os.environ.get("EDGEEVAL_FAKE_DELAY_S", "0")))
    shard, executor = scale_out(args, project)
    warn_if_busy(args.engine)
    started = time.perf_counter()
    # Pairs run one after another into one directory: a model that two pairs share is run once, the second
    # pair finding its records done.
    for pair in pairs:
        spec = project.config.pairs[pair]
        summary = run_models(project, pair, [spec.baseline, spec.candidate], prepared, out, settings,
                             engine_factory(args.engine), progress=not args.quiet, parallel=parallel,
                             retry_errors=args.retry_errors, shard=shard, executor=executor)
        rate = f", {summary.done / summary.seconds:.2f} examples/s" if summary.done and summary.seconds else ""
        which = f"{pair}: " if len(pairs) > 1 else ""
        print(f"{which}{summary.done} examples generated, {summary.skipped} already done, {summary.errors} errors; "
              f"{time.perf_counter() - started:.1f} s{rate}")
    # A shard's report would be partial, and shards finishing together would write it at once.
    if shard is not None:
        print(f"shard {shard} done; when every shard has finished: edgeeval report {out} (or the same run command "
              "without --shard, which also computes the metrics that need a model of their own, as BERTScore)")
        return 0
    from edgeeval.run.bertscore import score_run as compute_bertscores

    compute_bertscores(project, out, settings, engine_factory(args.engine), progress=not args.quiet)
    report = build_report(out, seed=args.seed, no_text=args.no_text)
    print(f"report: {report.resolve()}")
    return 0


def scale_out(args, project: Project):
    """(shard, executor) from --shard and --ray: this process's share of the examples, and where they are
    answered (None: here)."""
    from edgeeval.run.shard import Shard

    shard = Shard.parse(args.shard) if getattr(args, "shard", None) else None
    if getattr(args, "ray", None) is None:
        if getattr(args, "workers", None) is not None:
            raise ConfigError("--workers needs --ray")
        return shard, None
    if shard is not None:
        raise ConfigError("--shard and --ray do not go together: --ray spreads one run over a cluster, "
                          "--shard splits it into separate jobs")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    if args.chunk < 1:
        raise ConfigError(f"--chunk must be at least 1 (got {args.chunk})")
    from edgeeval.run.cluster import RayExecutor

    return None, RayExecutor(project, address=None if args.ray == "local" else args.ray, workers=args.workers,
                             chunk=args.chunk, worker_cpus=args.worker_cpus, quiet=args.quiet)


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
    from edgeeval.config.gguf import read_gguf_metadata

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
    load, cpus = os.getloadavg()[0], usable_cpus()
    if load >= cpus:
        print(f"edgeeval: warning: the machine is busy (load {load:.1f} on {cpus} CPUs); llama.cpp slows down "
              "badly on shared cores: stop the other work, or use --threads 1", file=sys.stderr)


def cmd_demo(args) -> int:
    args.config = args.config or str(BUILTIN_CONFIG)
    args.out = args.out or ("runs/demo-retrieval" if args.retrieval else "runs/demo")
    pairs = [DEMO_PAIR] + (DEMO_RETRIEVAL_PAIRS if args.retrieval else [])
    return cmd_run(args, pairs=pairs, tasks=[DEMO_TASK])


def cmd_report(args) -> int:
    from edgeeval.report import build_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise EdgeevalError(f"{run_dir} is not an edgeeval run directory (no manifest.json)")
    out = Path(args.out) if args.out else None
    report = build_report(run_dir, seed=args.seed, no_text=args.no_text, out_dir=out)
    print(f"report: {report.resolve()}\nhtml: {report.with_name('report.html').resolve()}")
    from edgeeval.run.shard import shard_gaps

    for note in shard_gaps(run_dir):
        print(f"edgeeval: warning: {note}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from edgeeval.report import build_comparison, default_compare_dir

    out = Path(args.out) if args.out else default_compare_dir()
    matches = {}
    for given in args.match:
        first, sep, other = given.partition("=")
        if not sep or not first or not other:
            raise ConfigError(f"--match {given!r}: expected FIRST=OTHER (a model of the first run, then its name in "
                              "the others)")
        matches[first] = other
    report = build_comparison([Path(d) for d in args.run_dirs], out, seed=args.seed, no_text=args.no_text,
                              matches=matches)
    print(f"report: {report.resolve()}\nhtml: {report.with_name('report.html').resolve()}")
    return 0


def cmd_models(args) -> int:
    from edgeeval.config.model_files import read_model_file, sha256_matches

    choice = find_config(args.config)
    project = load_project(args, choice)
    print(f"config: {project.config_path} (from {choice.chosen_by})")
    failures = 0
    for name, spec in project.config.models.items():
        where = spec.path or f"package {spec.package} ({spec.file})"
        if spec.retrieval is not None:
            where += f" + retrieval ({spec.retrieval.retriever}, corpus {spec.retrieval.corpus})"
        print(f"{name:24} {spec.family:10} {spec.chat_template:28} {where}")
        if not args.verify:
            continue
        try:
            path, info, sha = read_model_file(project, name)
        except EdgeevalError as exc:
            failures += 1
            print(f"    MISSING/INVALID: {exc}")
            continue
        ok = sha256_matches(spec, sha)
        failures += not ok
        template = "embedded" if info.chat_template else "none in file"
        print(f"    {path}\n    {info.architecture}, {info.quantization}, {info.size_bytes / 1e6:.0f} MB, "
              f"chat template in GGUF: {template}\n    sha256 {sha} {'OK' if ok else f'MISMATCH (expected {spec.sha256})'}")
    return 1 if failures else 0


def cmd_tasks(args) -> int:
    from edgeeval.run.planning import prepare_task, project_tasks

    project = load_project(args)
    for name, found in project_tasks(project).items():
        spec = load_task(found.path)
        task = prepare_task(project, name, None, None)
        shots = f"{spec.few_shot.count}-shot" if spec.few_shot else "0-shot"
        print(f"{name:17} {spec.kind:16} {spec.data.format:16} {len(task.examples):5} examples  {shots:7} "
              f"{spec.data.path}\n{'':17} metrics: {', '.join(spec.metrics)}\n{'':17} from: {found.folder.origin}")
    return 0


def cmd_init(args) -> int:
    """A project folder for the hospital's own models and data, laid out like edgeeval's built-in one:
    models.toml and one example task (TOML, prompt, three sample rows), each commented on what to change."""
    target = Path(args.dir).expanduser()
    files = sorted(p.relative_to(STARTER_ROOT) for p in STARTER_ROOT.rglob("*") if p.is_file())
    existing = [str(target / f) for f in files if (target / f).exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists; edgeeval init writes new files only (choose another folder)")
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STARTER_ROOT / name, target / name)
    written = "".join(f"  {target / f}\n" for f in files)
    print(f"wrote\n{written}\n"
          f"Try it (the two small demo models on the three example questions):\n"
          f"  cd {shlex.quote(str(target))}\n"
          f"  edgeeval tasks          # our_cases beside the built-in tasks\n"
          f"  edgeeval run --pair demo --task our_cases\n\n"
          f"Then put your models in models.toml and your questions in benchmarks/clinical/our_cases.toml "
          f"(the comments in each say what to change).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="models.toml to read (default: $EDGEEVAL_CONFIG, ./models.toml, "
                        "~/.config/edgeeval/models.toml, then the study's, shipped with edgeeval)")
    common.add_argument("--tasks-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own task TOMLs, prompts and data (repeatable; also "
                        "$EDGEEVAL_TASKS_DIRS); a task named like a built-in one replaces it")
    common.add_argument("--models-dir", help="directory relative model paths resolve against "
                        "(default: $EDGEEVAL_MODELS_DIR or ~/models)")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--out", help="run directory (re-running the same command resumes it)")
    running.add_argument("--limit", type=int, help="first N examples of each task only")
    running.add_argument("--max-tokens", type=int, help="override the tasks' max new tokens")
    running.add_argument("--threads", type=int, default=0,
                         help="CPU threads (default: one per physical core within this process's CPU affinity "
                              "and cgroup quota)")
    running.add_argument("--repack", choices=["auto", "on", "off"], default="auto",
                         help="llama.cpp's weight repacking for this CPU's matrix kernels. auto: off on Intel AMX "
                              "(where it crashes llama_decode), on elsewhere. It trades prompt speed against generation speed "
                              "differently on each CPU and quantization (measured cases: docs/performance.md); "
                              "compare with llama-bench --repack 0,1 on your machine")
    running.add_argument("--share-prefixes", choices=["on", "off"], default="on",
                         help="batched generation decodes a prompt prefix that several prompts share (system prompt, "
                              "shots, a patient's documents) once (default on); off decodes every prompt whole")
    running.add_argument("--seed", type=int, default=0, help="seed for the bootstrap (decoding is greedy)")
    running.add_argument("--mode", choices=["generate", "loglik"], default="generate",
                         help="generate: answers are generated and parsed (default); loglik: multiple-choice and "
                         "label tasks score every option by its log-probability, nothing is generated "
                         "(results go under TASK@loglik)")
    running.add_argument("--permute", metavar="cyclic[:K]",
                         help="ask every multiple-choice (or label) item under K cyclic rotations of its options "
                              "(K: its number of options by default); the report then shows accuracy over rotations, "
                              "consistency, position bias and, in loglik mode, PriDe-debiased accuracy")
    running.add_argument("--parallel", default="auto", metavar="N",
                         help="generate: decode N prompts together (continuous batching; faster on larger "
                         "models, answers may differ from one-at-a-time in the last bits, see docs/engine.md); "
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
    demo.add_argument("--retrieval", action="store_true",
                      help="add a third arm: SmolLM2 reading passages from the bundled corpus (BM25), compared with "
                      "SmolLM2 alone and with Gemma")
    demo.set_defaults(func=cmd_demo)
    models = sub.add_parser("models", parents=[common], help="list models.toml (--verify checks the files)")
    models.add_argument("--verify", action="store_true")
    models.set_defaults(func=cmd_models)
    tasks = sub.add_parser("tasks", parents=[common], help="list the tasks: built-in and your own, and where each came from")
    tasks.set_defaults(func=cmd_tasks)
    init = sub.add_parser("init", help="write a starting models.toml and an example task for your own data")
    init.add_argument("dir", metavar="DIR", help="the folder to write (created; existing files are never replaced)")
    init.set_defaults(func=cmd_init)
    run = sub.add_parser("run", parents=[common, running], help="evaluate both models of a pair")
    run.add_argument("--pair", action="append", required=True,
                     help="pair from models.toml (repeatable: pairs sharing a model run it once)")
    run.add_argument("--task", action="append", required=True, help="task name (repeatable)")
    run.add_argument("--data", action="append", default=[], metavar="TASK=PATH", help="real data file for a task")
    run.add_argument("--shard", metavar="K/N", help="run only shard K (from 0) of N, into its own record files "
                     "in --out (a Slurm array: --shard $SLURM_ARRAY_TASK_ID/N with N fixed, as "
                     "scripts/edgeeval-array.sbatch does, so a shard resubmitted alone keeps its share); "
                     "`edgeeval report` merges the shards")
    run.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="answer on Ray actors: no ADDRESS starts a private local instance (127.0.0.1 only); "
                     "'auto' or HOST:PORT joins a running cluster, which must use token authentication "
                     "(RAY_AUTH_MODE=token); needs pip install 'edgeeval[ray]'")
    run.add_argument("--workers", type=int, metavar="N",
                     help="with --ray: actors per model (default: as many as the cluster's free CPUs allow, "
                     "each reserving --threads CPUs)")
    run.add_argument("--chunk", type=int, default=8, metavar="N",
                     help="with --ray: examples per work item (what a lost actor or node costs at most)")
    run.add_argument("--worker-cpus", type=float, help=argparse.SUPPRESS)  # benchmarks: fake actors on few cores
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
    compare.add_argument("--match", action="append", default=[], metavar="FIRST=OTHER",
                         help="model FIRST of the first run is model OTHER in the others (e.g. its Q8_0 copy under "
                              "another name); by default a model is matched by its name, then by its `reference`")
    compare.set_defaults(func=cmd_compare)
    return parser


def _interrupt(signum, frame):
    # SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so the worker is shut down too.
    raise KeyboardInterrupt


REPACK = {"auto": None, "on": True, "off": False}
"""--repack as EngineSettings.use_extra_bufts (None: decided per CPU)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return args.func(args)
    except EdgeevalError as exc:
        print(f"edgeeval: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`edgeeval tasks | head`): nothing to report, and what a run finished is saved.
        # Later writes, and the interpreter's last flush, go nowhere instead of raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE.value if hasattr(signal, "SIGPIPE") else 1
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
