"""How well `edgeeval run --ray` spreads one run: scheduling efficiency, driver overhead, real models.

    python benchmarks/scale/run.py [--examples 2000] [--delay 0.05] [--workers 1,2,4,8,16] [--skip-real]

1. Scheduling: the fake engine answering in a fixed time (a sleep: it burns no CPU) on a local Ray cluster
   of 4 nodes x 4 CPU slots (127.0.0.1 only, token authentication), one model, 1 to 16 actors of one slot
   each; the fake actors sleep rather than compute, so 16 of them fit on a 2-core box.
   Efficiency = (examples x delay / workers) / wall time, end to end (actor start included) and in the
   steady state (after the last actor loaded). Driver overhead = the driver process's CPU time per example
   while the cluster answers (dispatching, receiving, appending and syncing records); the driver's CPU
   including planning (rendering every prompt, as a local run does too) is reported beside it.
2. Real models: the demo pair (gemma-3-270m, SmolLM2-135M) on 2 cores, one actor x 2 threads against two
   actors x 1 thread, in loglik and in generate mode; the answers of both layouts are compared.
3. On paper: the whole task suite for the 8B and 70B pairs on 1, 4 and 16 nodes (see README.md).

Writes benchmarks/scale/results.json; the last line printed is machine-readable.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import secrets
import shutil
import sys
import tempfile
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results.json"

# Before Ray is imported: every address it picks is then the loopback one, and its files stay private.
PRIVATE = tempfile.mkdtemp(prefix="ee-scale-")
os.environ.update({"RAY_TMPDIR": PRIVATE, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                   "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"})

from edgeeval.cli import engine_factory  # noqa: E402
from edgeeval.config.models import load_models_config  # noqa: E402
from edgeeval.engine import EngineSettings  # noqa: E402
from edgeeval.run.cluster import RayExecutor  # noqa: E402
from edgeeval.run.planning import prepare_task  # noqa: E402
from edgeeval.run.runner import run_models  # noqa: E402
from edgeeval.run.store import RunStore, load_records  # noqa: E402

FAKE_MODEL = "smollm2-135m-instruct"  # any model file: the fake engine only reads its name
DEMO = ("gemma3-270m", "smollm2-135m-instruct")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def synthetic_cases(path: Path, n: int) -> Path:
    """n five-option case challenges in the bundled CSV format (ids cc-00000...)."""
    source = ROOT / "benchmarks" / "clinical" / "data" / "case_challenges_sample.csv"
    with source.open() as handle:
        rows = list(csv.DictReader(handle))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["id"] = f"cc-{i:05d}"
            row["question"] = f"(Case {i}.) {row['question']}"
            writer.writerow(row)
    return path


def start_cluster(nodes: int, cpus: int):
    import ray
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": 200 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, object_store_memory=100 * 2**20)
    return ray, cluster


class _Bare:
    """An actor that does nothing: how long Ray itself takes to start actors on this cluster."""

    def ready(self) -> int:
        return os.getpid()


def bare_actor_startup(cluster, n: int) -> float:
    """Seconds to start n bare actors of one CPU slot each and hear from all of them (the floor under
    edgeeval's start-up: Ray's worker processes, without edgeeval, its engine process or a model)."""
    import ray

    ray.init(address=cluster.address)
    try:
        remote = ray.remote(_Bare)
        began = time.perf_counter()
        actors = [remote.options(num_cpus=1, scheduling_strategy="SPREAD").remote() for _ in range(n)]
        ray.get([a.ready.remote() for a in actors])
        seconds = time.perf_counter() - began
        for actor in actors:
            ray.kill(actor)
    finally:
        ray.shutdown()
    time.sleep(2)  # the killed workers' processes exit before the next measurement
    return round(seconds, 2)


def scheduling(project, cluster, data: Path, n: int, delay: float, workers: list[int], work_dir: Path) -> list[dict]:
    task = prepare_task(project, "case_challenges", data, None)
    settings = EngineSettings(n_threads=1, backend="fake", fake_delay_s=delay)
    rows = []
    for w in workers:
        out = work_dir / f"sched-{w}"
        appended: list[float] = []
        original = RunStore.append_many

        def timed(self, records, _original=original):
            _original(self, records)
            appended.extend([time.perf_counter()] * len(records))

        RunStore.append_many = timed
        executor = RayExecutor(project, address=cluster.address, workers=w, chunk=8, worker_cpus=1.0, quiet=True)
        dispatch_cpu = []

        def dispatch(*args, _run=RayExecutor.__call__, _executor=executor):
            # The driver's CPU while the cluster answers: dispatching, receiving, appending (not planning).
            before = cpu_seconds()
            try:
                return _run(_executor, *args)
            finally:
                dispatch_cpu.append(cpu_seconds() - before)

        load = os.getloadavg()[0]
        cpu, began = cpu_seconds(), time.perf_counter()
        try:
            summary = run_models(project, "demo", [FAKE_MODEL], [task], out, settings, engine_factory("fake"),
                                 progress=False, executor=dispatch)
        finally:
            RunStore.append_many = original
        wall, cpu = time.perf_counter() - began, cpu_seconds() - cpu
        ready = executor.all_ready_at or began
        after = [t for t in appended if t >= ready]
        steady = (len(after) * delay / w) / (appended[-1] - ready) if len(after) > 1 else None
        assert summary.done == n and len({r.example_id for r in load_records(out, FAKE_MODEL, task.run_name)}) == n
        row = {"workers": w, "examples": n, "delay_s": delay, "wall_s": round(wall, 3),
               "efficiency": round(n * delay / w / wall, 3), "steady_efficiency": steady and round(steady, 3),
               "startup_s": round(ready - began, 2), "driver_cpu_ms_per_example": round(1000 * cpu / n, 3),
               "driver_dispatch_cpu_ms_per_example": round(1000 * dispatch_cpu[0] / n, 3),
               "load_before": round(load, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def real_models(project, cluster, work_dir: Path) -> list[dict]:
    rows = []
    # Few examples: on a shared 2-core box llama.cpp threads wait for each other at every step.
    for mode, limit, max_tokens in (("loglik", 12, None), ("generate", 4, 32)):
        task = prepare_task(project, "case_challenges", None, limit, max_tokens, mode)
        answers = {}
        for layout, (workers, threads) in {"1x2": (1, 2), "2x1": (2, 1)}.items():
            for model in DEMO:
                out = work_dir / f"real-{mode}-{layout}-{model}"
                settings = EngineSettings(n_threads=threads, backend="llama")
                executor = RayExecutor(project, address=cluster.address, workers=workers, chunk=4, quiet=True)
                load = os.getloadavg()[0]
                began = time.perf_counter()
                run_models(project, "demo", [model], [task], out, settings, engine_factory("llama"), progress=False,
                           executor=executor)
                wall = time.perf_counter() - began
                records = load_records(out, model, task.run_name)
                answers[(layout, model)] = {r.example_id: r.output for r in records}
                row = {"mode": mode, "layout": layout, "model": model, "examples": len(records),
                       "wall_s": round(wall, 2), "startup_s": executor.invocation.get("startup_seconds"),
                       "examples_per_s": round(len(records) / wall, 3), "load_before": round(load, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        for model in DEMO:
            a, b = answers[("1x2", model)], answers[("2x1", model)]
            same = sum(a[k] == b.get(k) for k in a)
            rows.append({"mode": mode, "model": model, "same_answers_1x2_vs_2x1": f"{same}/{len(a)}"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# On paper. Throughputs: mainline llama.cpp column of ikawrakow/ik_llama.cpp PR #54 (2024-09-14), LLaMA-3.1-8B
# Q4_0 on an AMD Ryzen 9 7950X (16 cores, Zen4): pp512 123.5 t/s with 16 threads, tg128 11.25 t/s with 4
# threads (generation is memory-bound: more threads barely help). 70B: divided by the weight-size ratio
# (42.5 GB Q4_K_M / 4.7 GB Q4_0 = 9.0), which gives 13.7 and 1.25 t/s, inside the 10-30 and 1-2.
PAPER = {
    "cpu": "AMD Ryzen 9 7950X, 16 cores, DDR5 (one node = one actor x 16 threads)",
    "source": "https://github.com/ikawrakow/ik_llama.cpp/pull/54 (mainline llama.cpp column)",
    "throughput": {"8B": {"prompt_tps": 123.5, "gen_tps": 11.25}, "70B": {"prompt_tps": 13.7, "gen_tps": 1.25}},
    # Assumed test-set sizes and mean prompt lengths (tokens); replace with your files' counts.
    "tasks": {
        "case_challenges": (1000, 700), "jama_challenges": (1524, 700), "medqa": (1273, 250), "medmcqa": (4183, 100),
        "pubmedqa": (500, 400), "mednli": (1422, 120), "meqsum": (1000, 150), "problem_summary": (237, 1200),
        "medisumqa": (416, 2500), "medisumcode": (500, 2500), "longhealth_t1": (400, 6000),
        "longhealth_t2": (400, 6000), "longhealth_t3": (400, 6000),
    },
    "generated_share_of_max_tokens": 0.5,
}


def on_paper(efficiency: dict[int, float]) -> list[dict]:
    max_tokens = {}
    for path in (ROOT / "benchmarks" / "clinical").glob("*.toml"):
        max_tokens[path.stem] = tomllib.loads(path.read_text()).get("max_tokens", 128)
    rows = []
    for size, speed in PAPER["throughput"].items():
        per_model = sum(n * (prompt / speed["prompt_tps"] + PAPER["generated_share_of_max_tokens"] * max_tokens[t]
                             / speed["gen_tps"]) for t, (n, prompt) in PAPER["tasks"].items())
        for nodes in (1, 4, 16):
            eff = efficiency.get(nodes) or min(efficiency.values() or [1.0])
            hours = 2 * per_model / (nodes * eff) / 3600  # both models of the pair
            rows.append({"pair": size, "nodes": nodes, "scheduling_efficiency": eff, "hours": round(hours, 1),
                         "days": round(hours / 24, 2)})
    return rows


def paper_section(scheduling: list[dict]) -> dict:
    # A run of the suite lasts days: actor start-up (seconds) is noise there, so the steady efficiency applies.
    efficiency = {r["workers"]: r["steady_efficiency"] or r["efficiency"] for r in scheduling}
    return {**{k: v for k, v in PAPER.items() if k != "tasks"},
            "tasks": {t: {"examples": n, "prompt_tokens": p} for t, (n, p) in PAPER["tasks"].items()},
            "efficiency_used": "steady (after start-up), measured at that many workers",
            "estimates": on_paper(efficiency)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--paper-only", action="store_true",
                        help="recompute the on-paper estimates from the scheduling figures in results.json")
    args = parser.parse_args()
    if args.paper_only:
        result = json.loads(RESULTS.read_text())
        result["paper"] = paper_section(result["scheduling"])
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["paper"]["estimates"]))
        return 0
    workers = [int(w) for w in args.workers.split(",")]
    project = load_models_config(ROOT / "models.toml")
    work_dir = Path(tempfile.mkdtemp(prefix="ee-scale-runs-"))
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": os.getloadavg()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ray, cluster = start_cluster(nodes=4, cpus=max(4, -(-max(workers) // 4)))
    try:
        data = synthetic_cases(work_dir / "cases.csv", args.examples)
        result["bare_actor_startup_s"] = {"actors": max(workers), "seconds": bare_actor_startup(cluster, max(workers))}
        print(json.dumps(result["bare_actor_startup_s"]), flush=True)
        result["scheduling"] = scheduling(project, cluster, data, args.examples, args.delay, workers, work_dir)
    finally:
        cluster.shutdown()
    if not args.skip_real:
        ray, cluster = start_cluster(nodes=1, cpus=2)
        try:
            result["real"] = real_models(project, cluster, work_dir)
        finally:
            cluster.shutdown()
    result["paper"] = paper_section(result["scheduling"])
    top = max(result["scheduling"], key=lambda r: r["workers"])
    real = result.get("real", [])
    wall = {layout: sum(r["wall_s"] for r in real if r.get("layout") == layout) for layout in ("1x2", "2x1")}
    speedup = round(wall["1x2"] / wall["2x1"], 3) if wall["2x1"] else None
    result["summary"] = {"efficiency_at_max_workers": top["efficiency"], "max_workers": top["workers"],
                         "steady_efficiency_at_max_workers": top["steady_efficiency"],
                         "startup_s_at_max_workers": top["startup_s"],
                         "bare_actor_startup_s": result["bare_actor_startup_s"]["seconds"],
                         "driver_overhead_ms": top["driver_dispatch_cpu_ms_per_example"],
                         "driver_cpu_ms_per_example_with_planning": top["driver_cpu_ms_per_example"],
                         "real_speedup_2x1_vs_1x2": speedup, "load_at_end": os.getloadavg()}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work_dir, ignore_errors=True)
    shutil.rmtree(PRIVATE, ignore_errors=True)
    s = result["summary"]
    print(f"efficiency_at_max_workers={s['efficiency_at_max_workers']} max_workers={s['max_workers']} "
          f"driver_overhead_ms={s['driver_overhead_ms']} real_speedup_2x1_vs_1x2={s['real_speedup_2x1_vs_1x2']} "
          f"steady_efficiency_at_max_workers={s['steady_efficiency_at_max_workers']} "
          f"startup_s_at_max_workers={s['startup_s_at_max_workers']} bare_actor_startup_s={s['bare_actor_startup_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
