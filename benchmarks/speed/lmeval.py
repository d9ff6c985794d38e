"""lm-eval's gguf backend against llama-cpp-python's server, on the same items (127.0.0.1 only, stopped at the end)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .children import LoglikRun, run_child
from .common import LMEVAL_VENV, LOGLIK_CTX, say
from .inputs import Item
from .jsonable import spliced
from .processes import run_timed

LMEVAL_TASK = """task: edgeeval_cases
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
"""

LMEVAL_DRIVER = """
import json, sys, time
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
tm = TaskManager(include_path=sys.argv[1])
t0 = time.perf_counter()
res = simple_evaluate(model="gguf", model_args="base_url=" + sys.argv[2], tasks=["edgeeval_cases"],
                      limit=int(sys.argv[3]), task_manager=tm)
print(json.dumps({"seconds": time.perf_counter() - t0, "acc": res["results"]["edgeeval_cases"].get("acc,none")}))
"""


@dataclass(kw_only=True)
class LmevalRun:
    """lm-eval's time and accuracy (acc) on the items."""

    seconds: float
    acc: float | None
    n_items: int
    per_item_s: float


@dataclass(kw_only=True)
class LmevalComparison:
    """lm-eval's run, and edgeeval's seconds per item on the same items (median of three runs)."""

    lmeval: LmevalRun = spliced()
    model: str
    edgeeval_per_item_s: float
    edgeeval_per_item_s_runs: list[float]
    ratio: float


def compare_lmeval(models: list[str], items: list[Item], args, tmp: Path) -> LmevalComparison:
    """lm-eval on the smaller model's first 2 (--quick) or 3 items, against edgeeval on the same items."""
    lm_model = min(models, key=os.path.getsize)  # the quicker one: lm-eval takes minutes per item
    n = args.lmeval_items or (2 if args.quick else 3)
    say(Path(lm_model).name, f"lm-eval gguf on {n} items")
    lm_dir = tmp / "lmeval"
    lm_dir.mkdir()
    lm = lmeval_gguf(lm_model, items[:n], args.threads, lm_dir)
    # edgeeval on the same items: a second or two, so the median of three runs.
    runs = []
    for _ in range(3):
        ours: LoglikRun = run_child({"model": lm_model, "threads": args.threads, "n_ctx": LOGLIK_CTX, "kind": "loglik",
                                     "items": items[:n], "prefix": ""})
        runs.append(ours["seconds"] / n)
    return LmevalComparison(lmeval=lm, model=Path(lm_model).name, edgeeval_per_item_s=sorted(runs)[1],
                            edgeeval_per_item_s_runs=runs, ratio=lm.per_item_s / sorted(runs)[1])


def lmeval_gguf(model: str, items: list[Item], threads: int, tmp: Path) -> LmevalRun:
    """lm-eval's gguf backend against llama-cpp-python's server (logits_all, as lm-eval's docs ask)."""
    python = LMEVAL_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"no lm-eval venv at {LMEVAL_VENV} (see benchmarks/speed/README.md)")
    data = tmp / "cases.jsonl"
    data.write_text("".join(json.dumps({"question": i["question"], "options": i["options"], "gold": i["gold"]}) + "\n"
                            for i in items))
    (tmp / "task").mkdir()
    (tmp / "task" / "edgeeval_cases.yaml").write_text(LMEVAL_TASK.format(data=data))
    (tmp / "driver.py").write_text(LMEVAL_DRIVER)
    port = _free_port()
    server = subprocess.Popen([str(python), "-m", "llama_cpp.server", "--model", model, "--logits_all", "True",
                               "--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", server, 120)
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        out, wall, _ = run_timed([str(python), str(tmp / "driver.py"), str(tmp / "task"), f"http://127.0.0.1:{port}",
                                  str(len(items))], env=env)
        result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        return LmevalRun(seconds=result["seconds"], acc=result["acc"], n_items=len(items),
                         per_item_s=result["seconds"] / len(items))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("llama_cpp.server exited while starting")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"llama_cpp.server did not answer at {url}")
