"""Retrieval benchmark: BM25 index build and query time on a synthetic 100,000-passage corpus, the index's
memory, and the share of wall time retrieval adds to a loglik run of the demo's retrieval arm.

    python benchmarks/retrieval/run.py [--passages N] [--queries N] [--skip-demo]

Writes benchmarks/retrieval/results.json and ends with one machine-readable line:
    build_s_100k=… query_ms=… wall_share=… index_rss_mb=…
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
SEED = 20261202
GOALS = {"build_s_100k": 60.0, "query_ms": 10.0, "wall_share": 0.05}


def synthetic_corpus(path: Path, n: int, seed: int = SEED) -> None:
    """n passages of 40-120 words drawn from a Zipf-like vocabulary of 30,000 made-up words (frequent words
    behave like the stopwords a real corpus keeps), as MedRAG-style JSON lines."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"t{i:x}q" for i in range(30_000)])
    weights = 1.0 / np.arange(1, vocab.size + 1) ** 1.05
    weights /= weights.sum()
    lengths = rng.integers(40, 121, size=n)
    words = rng.choice(vocab.size, size=int(lengths.sum()), p=weights)
    with path.open("w", encoding="utf-8") as handle:
        start = 0
        for i, length in enumerate(lengths):
            chunk = vocab[words[start:start + length]]
            start += length
            handle.write(json.dumps({"id": f"syn-{i}", "title": " ".join(chunk[:3]), "content": " ".join(chunk[3:])}) + "\n")


def queries(n: int, seed: int = SEED + 1) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"t{i:x}q" for i in range(30_000)])
    weights = 1.0 / np.arange(1, vocab.size + 1) ** 1.05
    weights /= weights.sum()
    return [" ".join(vocab[rng.choice(vocab.size, size=int(rng.integers(15, 60)), p=weights)]) for _ in range(n)]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_index(corpus: Path, cache: Path, n_queries: int) -> dict:
    """Build (fresh cache), then query; run in this process."""
    from edgeeval.retrieval.index import open_bm25
    from edgeeval.retrieval.leakage import CANDIDATES

    began = time.perf_counter()
    index = open_bm25(corpus, 150, 30, progress=True, cache=cache)
    build = time.perf_counter() - began
    assert index.built
    asked = queries(n_queries)
    index.search(asked[0], 5)  # first call compiles nothing, but warms the page cache
    began = time.perf_counter()
    for query in asked:
        index.search(query, 5)
    query_k5 = (time.perf_counter() - began) / len(asked) * 1000
    began = time.perf_counter()
    for query in asked:
        index.search(query, 5 + CANDIDATES)  # what planning asks for: k plus the leakage guard's candidates
    query_planned = (time.perf_counter() - began) / len(asked) * 1000
    return {"passages": len(index.passages), "build_s": round(build, 2), "query_ms_k5": round(query_k5, 3),
            "query_ms_k25": round(query_planned, 3), "build_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "key": index.key}


LOAD_SNIPPET = """
import sys, json
sys.path.insert(0, {root!r})
from pathlib import Path
import edgeeval.retrieval.index as ix
def rss_mb(field="VmRSS:"):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
import bm25s
before = rss_mb()
index = ix.open_bm25(Path({corpus!r}), 150, 30, progress=False, cache=Path({cache!r}))
assert not index.built
index.search("t1q t2q t3q", 5)
# VmHWM, not ru_maxrss: ru_maxrss survives fork and exec, so it would report the parent's peak.
print(json.dumps({{"before_mb": before, "after_mb": rss_mb(), "peak_mb": rss_mb("VmHWM:")}}))
"""


def measure_loaded_rss(corpus: Path, cache: Path) -> dict:
    """The memory a cached index takes in a fresh process (RSS after loading it and its passages, less before)."""
    code = LOAD_SNIPPET.format(root=str(ROOT), corpus=str(corpus), cache=str(cache))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {"index_rss_mb": round(figures["after_mb"] - figures["before_mb"], 1),
            "load_peak_rss_mb": round(figures["peak_mb"], 1)}


def measure_demo_share(work: Path, threads: int) -> dict:
    """A loglik run of the demo's retrieval arm (SmolLM2 + the bundled corpus) on the 36 case challenges:
    the time retrieval takes (opening the cached index, choosing and fitting passages for every item) as a
    share of the run's wall time."""
    from edgeeval.cli import engine_factory
    from edgeeval.config.models import load_models_config
    from edgeeval.engine import EngineSettings
    from edgeeval.retrieval.arm import corpus_path, prepare_retrieval
    from edgeeval.run.planning import plan_units, prepare_model, prepare_task
    from edgeeval.run.runner import run_models

    project = load_models_config(ROOT / "models.toml")
    task = prepare_task(project, "case_challenges", None, None, mode="loglik")
    spec = project.config.models["smollm2-135m-rag"].retrieval
    prepare_retrieval(project, "smollm2-135m-rag", spec, 4096, progress=False)  # build once, outside the timing
    began = time.perf_counter()
    run_models(project, "demo-rag", ["smollm2-135m-rag"], [task], work / "demo", EngineSettings(n_threads=threads),
               engine_factory("llama"), progress=False)
    wall = time.perf_counter() - began
    # Retrieval's part: the rag arm's preparation and planning less the plain arm's (the same model file).
    timings = {}
    for name in ("smollm2-135m-instruct", "smollm2-135m-rag"):
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            plan_units(prepare_model(project, name), task)
            best = min(best, time.perf_counter() - began)
        timings[name] = best
    retrieval_s = max(0.0, timings["smollm2-135m-rag"] - timings["smollm2-135m-instruct"])
    return {"demo_items": len(task.examples), "demo_wall_s": round(wall, 2), "retrieval_s": round(retrieval_s, 4),
            "wall_share": round(retrieval_s / wall, 5), "corpus": str(corpus_path(project, spec))}




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-demo", action="store_true", help="leave out the real-model loglik run")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgeeval-retrieval-bench-") as tmp:
        work = Path(tmp)
        os.environ["EDGEEVAL_CACHE_DIR"] = str(work / "cache")
        corpus = work / "synthetic.jsonl"
        began = time.perf_counter()
        synthetic_corpus(corpus, args.passages)
        made = time.perf_counter() - began
        index = measure_index(corpus, work / "cache" / "retrieval", args.queries)
        memory = measure_loaded_rss(corpus, work / "cache" / "retrieval")
        demo = {} if args.skip_demo else measure_demo_share(work, args.threads)
    summary = {"build_s_100k": index["build_s"], "query_ms": index["query_ms_k25"],
               "wall_share": demo.get("wall_share"), "index_rss_mb": memory["index_rss_mb"]}
    results = {"summary": summary, "goals": GOALS, "index": index, "memory": memory, "demo": demo,
               "corpus": {"passages": args.passages, "generated_s": round(made, 2), "seed": SEED},
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "load_before": [round(x, 2) for x in load_before],
                           "load_after": [round(x, 2) for x in os.getloadavg()]},
               "notes": "query_ms is one search for k + the leakage guard's candidates (5 + 20), as planning asks; "
                        "query_ms_k5 a plain top-5 search. index_rss_mb: RSS of a fresh process after loading the "
                        "cached index and its passages, less before."}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    share = "NA" if summary["wall_share"] is None else f"{summary['wall_share']:.5f}"
    print(f"build_s_100k={summary['build_s_100k']} query_ms={summary['query_ms']} wall_share={share} "
          f"index_rss_mb={summary['index_rss_mb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
