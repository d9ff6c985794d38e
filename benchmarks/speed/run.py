"""Speed of edgeeval's engine, measured side by side with llama.cpp's own tools and lm-eval.

    python benchmarks/speed/run.py [--quick] [--model PATH ...] [--threads N] [--skip-lmeval]

Every number comes from one run on the same GGUF, items and thread count. Each measurement runs in
a fresh child process (so its peak RSS is its own): edgeeval's engine in `run.py --child ...`, the
peers as their users run them. Prints a table, writes benchmarks/speed/results.json, and ends with
one machine-readable line. See README.md beside this file for how the peers are built.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CASES = ROOT / "benchmarks" / "clinical" / "data" / "case_challenges_sample.csv"
RESULTS = Path(__file__).resolve().parent / "results.json"
PEERS_DIR = Path(os.environ.get("EDGEEVAL_PEERS_DIR", Path.home() / ".cache" / "edgeeval" / "peers"))
LMEVAL_VENV = Path(os.environ.get("EDGEEVAL_LMEVAL_VENV", "/tmp/peers/lmeval-venv"))
LLAMA_CPP_VERSION = "0.3.36"
N_ITEMS = 30
SHOTS = 3
LETTERS = "ABCDE"
BATCH_SIZES = (1, 2, 4, 8, 16)
# llama-perplexity --multiple-choice as its README runs it: 128 sequences over a unified cache of
# 128 x 32 = 4096 cells, one 4096-token batch. edgeeval gets the same cache size.
PPL_ARGS = ["--multiple-choice", "-np", "128", "-kvu", "-c", "32", "-b", "4096"]
LOGLIK_CTX = 4096


# --- items -------------------------------------------------------------------------------------

def load_items() -> tuple[list[dict], list[dict]]:
    """30 items to score and the 3 solved examples that make the few-shot prefix (other items)."""
    from edgeeval.data.example import load_multiple_choice

    examples = load_multiple_choice(CASES)
    rows = [{"id": e.id, "question": e.fields["question"], "options": list(e.fields["options"].values()),
             "letters": list(e.fields["options"]), "gold": list(e.fields["options"]).index(e.gold)}
            for e in examples]
    return rows[:N_ITEMS], rows[N_ITEMS : N_ITEMS + SHOTS]


def few_shot_prefix(shots: list[dict]) -> str:
    return "".join(f"{s['question']} {s['options'][s['gold']]}\n\n" for s in shots)


def letter_prompt(item: dict) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in zip(item["letters"], item["options"]))
    return f"{item['question']}\n\n{lines}\n\nAnswer:"


# --- children: one measurement of edgeeval's engine per process ---------------------------------

def child_main(spec: dict) -> dict:
    from edgeeval.engine import EngineSettings
    from edgeeval.engine.llama import LlamaModel

    settings = EngineSettings(n_ctx=spec["n_ctx"], n_threads=spec["threads"], n_seq_max=spec.get("n_seq_max", 32),
                              n_batch=spec.get("n_batch", 512), n_ubatch=spec.get("n_ubatch", 512),
                              flash_attn=spec.get("flash_attn", False), draft_model=spec.get("draft"),
                              n_draft=spec.get("n_draft", 8)).resolved()
    model = LlamaModel(spec["model"], settings)
    try:
        return {**CHILD_KINDS[spec["kind"]](model, spec), "settings": {
            "n_ctx": settings.n_ctx, "n_batch": settings.n_batch, "n_ubatch": settings.n_ubatch,
            "n_threads": settings.n_threads, "n_seq_max": settings.n_seq_max, "flash_attn": settings.flash_attn}}
    finally:
        model.close()


def child_loglik(model, spec: dict) -> dict:
    items = [(spec["prefix"] + item["question"], [" " + o for o in item["options"]]) for item in spec["items"]]
    model.loglikelihood_many(items[:1])  # warm-up: page the weights in, as any second call would find them
    model.loglikelihood_many([("warm up", [" a", " b"])])  # and forget that item's prefix again
    before = dict(model.counters)
    start = time.perf_counter()
    scores = model.loglikelihood_many(items)
    seconds = time.perf_counter() - start
    after = model.counters
    return {"seconds": seconds, "n_items": len(items),
            "decode_seconds": after["decode_seconds"] - before["decode_seconds"],
            "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
            "prompt_tokens_decoded": after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"],
            "scores": [[s.model_dump(mode="json", include={"logprob", "n_tokens", "token_logprobs", "error"})
                        for s in item] for item in scores],
            "option_tokens": [[model.split_tokens(c, o)[0] for o in opts] for c, opts in items]}


def child_letters(model, spec: dict) -> dict:
    prompts = [letter_prompt(item) for item in spec["items"]]
    letters = [[" " + letter for letter in item["letters"]] for item in spec["items"]]
    model.letter_logprobs(prompts[0], letters[0])
    model.letter_logprobs("warm up", [" A"])
    before = dict(model.counters)
    start = time.perf_counter()
    picks = []
    for prompt, options in zip(prompts, letters):
        logprobs = model.letter_logprobs(prompt, options)
        picks.append(max(range(len(options)), key=lambda i: logprobs[options[i]]))
    seconds = time.perf_counter() - start
    decoded = model.counters["prompt_tokens_decoded"] - before["prompt_tokens_decoded"]
    return {"seconds": seconds, "n_items": len(prompts), "tokens_decoded": decoded,
            "prompt_tokens": model.counters["prompt_tokens"] - before["prompt_tokens"],
            "decode_seconds": model.counters["decode_seconds"] - before["decode_seconds"], "picks": picks}


def child_tg(model, spec: dict) -> dict:
    """Generation speed of one sequence: 128 tokens after a short prompt, less the prompt's share."""
    prompt = "The patient is a 58-year-old man with chest pain. Describe the workup in detail:"
    model.generate(prompt, 8, [])
    runs = []
    for _ in range(spec.get("repeats", 2)):
        model.generate("x", 1, [])  # a different prompt, so the next one is decoded from scratch
        t0 = time.perf_counter()
        one = model.generate(prompt, 1, [])
        t1 = time.perf_counter()
        model.generate("x", 1, [])
        t2 = time.perf_counter()
        full = model.generate(prompt, spec["n_gen"], [], ignore_eos=True)
        t3 = time.perf_counter()
        runs.append({"tokens": full.n_output_tokens - one.n_output_tokens, "seconds": (t3 - t2) - (t1 - t0)})
    best = max(runs, key=lambda r: r["tokens"] / r["seconds"])
    return {**best, "tokens_per_s": best["tokens"] / best["seconds"], "runs": runs}


def child_batched(model, spec: dict) -> dict:
    """generate_many with PL prompts of ~P tokens each (no common prefix), T tokens each; and the
    same prompts one at a time."""
    prompts = batched_prompts(model, spec["texts"], spec["pp"])
    n_prompt = [len(model.tokenize(p)) for p in prompts]
    model.generate_many(prompts[:2], 4, [])
    out = {"pp_mean": sum(n_prompt) / len(n_prompt), "sizes": {}}
    for pl in spec["sizes"]:
        batch = prompts[:pl]
        model.generate("x", 1, [])
        before = dict(model.counters)
        t0 = time.perf_counter()
        gens = model.generate_many(batch, spec["tg"], [], n_parallel=pl, ignore_eos=True)
        seconds = time.perf_counter() - t0
        out["sizes"][str(pl)] = {"seconds": seconds, "generated": sum(g.n_output_tokens for g in gens),
                                 "prompt_tokens": sum(n_prompt[:pl]),
                                 "decode_seconds": model.counters["decode_seconds"] - before["decode_seconds"],
                                 "decode_calls": model.counters["decode_calls"] - before["decode_calls"],
                                 "texts": [g.text for g in gens]}
    if not spec.get("one_at_a_time", True):
        return out
    singles = []
    t0 = time.perf_counter()
    n_single = max(spec["sizes"])
    for prompt in prompts[:n_single]:
        model.generate("x", 1, [])
        singles.append(model.generate(prompt, spec["tg"], [], ignore_eos=True))
    out["one_at_a_time"] = {"seconds": time.perf_counter() - t0, "n": n_single,
                            "generated": sum(g.n_output_tokens for g in singles),
                            "prompt_tokens": sum(n_prompt[:n_single]), "texts": [g.text for g in singles]}
    return out


def child_match(model, spec: dict) -> dict:
    """Greedy answers to the case-challenge prompts: batched vs one at a time."""
    prompts = spec["prompts"]
    batched = model.generate_many(prompts, spec["max_tokens"], [], n_parallel=spec["n_parallel"])
    single = [model.generate(p, spec["max_tokens"], []) for p in prompts]
    return {"batched": [g.text for g in batched], "single": [g.text for g in single]}


def batched_prompts(model, texts: list[str], pp: int) -> list[str]:
    """Prompts of about `pp` tokens (distinct texts cut at a token boundary, BOS included)."""
    out = []
    for text in texts:
        tokens = model.tokenize(text)
        while len(tokens) < pp:
            tokens += model.tokenize(" " + text)[1:]
        body = b"".join(model.piece(t) for t in tokens[1:pp])
        out.append(body.decode("utf-8", errors="ignore"))
    return out


def child_speculative(model, spec: dict) -> dict:
    """Per prompt: the prompt's time (prompt + 1 token, from an empty cache), then plain greedy and the
    speculative method, each from the cached prompt, so each time is the answer's own; the order of the
    two alternates from prompt to prompt, so a drift in the machine's speed hits both alike."""
    out = []
    for i, prompt in enumerate(spec["prompts"]):
        model.generate("x", 1, [])
        t0 = time.perf_counter()
        model.generate(prompt, 1, spec["stop"])
        prompt_s = time.perf_counter() - t0
        draft_prompt_s = 0.0
        if model.draft is not None:
            # The draft model reads the prompt too, once: timed here beside the target's, so the answers'
            # times below are generation only for both models (as llama-speculative's "decoded" figure).
            model.draft.generate("x", 1, [])
            t0 = time.perf_counter()
            model.draft.feed_prompt(model.tokenize(prompt))
            draft_prompt_s = time.perf_counter() - t0
        runs = {}
        for method in (("none", spec["method"]) if i % 2 == 0 else (spec["method"], "none")):
            t0 = time.perf_counter()
            g = model.generate(prompt, spec["max_tokens"], spec["stop"], speculative=method)
            runs[method] = {"seconds": time.perf_counter() - t0, "tokens": g.n_output_tokens, "text": g.text,
                            **(g.notes.get("speculative") or {})}
        out.append({"prompt_seconds": prompt_s, "draft_prompt_seconds": draft_prompt_s, "plain": runs["none"],
                    "speculative": runs[spec["method"]]})
    return {"examples": out}


def child_divergence(model, spec: dict) -> dict:
    """Per prompt: plain greedy's tokens, each decoded alone with its row of logits kept; then the same tokens
    decoded `chunk` at a time with every row's logits (the shape of a verification that keeps the whole draft).
    Per position: whether the two rows' greedy tokens differ, plain's margin between its top two logits, and how
    far the multi-token decode moved the logits. With chunk 1 both paths are the same computation (a control)."""
    import numpy as np

    out = []
    for prompt in spec["prompts"]:
        tokens = model.tokenize(prompt)
        model.generate("x", 1, [])
        model.feed_prompt(tokens)
        plain, chosen = [], []
        for _ in range(spec["max_tokens"]):
            row = model.logits(-1).copy()
            plain.append(row)
            chosen.append(int(np.argmax(row)))
            if model.is_end(chosen[-1]):
                break
            model.append_tokens([chosen[-1]])
        model.generate("x", 1, [])
        model.feed_prompt(tokens)
        batched = [model.logits(-1).copy()]
        forced = chosen[:-1]
        for begin in range(0, len(forced), spec["chunk"]):
            part = forced[begin : begin + spec["chunk"]]
            model.append_every_row(part)  # the engine's verification decode
            batched += [model.logits(index).copy() for index in range(len(part))]
        positions = []
        for i, (a_row, b_row) in enumerate(zip(plain, batched)):
            top2 = np.partition(a_row, -2)[-2:]
            a, b = chosen[i], int(np.argmax(b_row))
            positions.append({"flip": a != b, "margin": float(top2[1] - top2[0]),
                              "max_abs_delta": float(np.max(np.abs(a_row - b_row))),
                              # how much the batch moved the gap between plain's token and the batch's choice
                              "gap_moved": float((a_row[a] - a_row[b]) - (b_row[a] - b_row[b])) if a != b else 0.0})
        out.append({"n_tokens": len(positions), "positions": positions})
    return {"prompts": out}


CHILD_KINDS = {"loglik": child_loglik, "letters": child_letters, "tg": child_tg, "batched": child_batched,
               "match": child_match, "speculative": child_speculative, "divergence": child_divergence}


def run_child(spec: dict) -> dict:
    """A child measurement in a fresh interpreter; returns its result and its peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    try:
        out, _, rss = run_timed([sys.executable, __file__, "--child", handle.name], merge_stderr=False)
    finally:
        os.unlink(handle.name)
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": rss}


# --- peers -------------------------------------------------------------------------------------

@functools.cache
def edgeeval_repacks() -> bool:
    """Whether edgeeval's engine repacks weights on this CPU (EngineSettings' per-CPU default: off on Intel AMX).
    The Qwen section's peers run the same way, so that both sides use the same matrix kernels: on one AMD EPYC
    repacking cost Qwen 1.5B Q4_K_M 31% of llama-bench's pp512 and gained 24% in tg."""
    from edgeeval.engine import EngineSettings

    return bool(EngineSettings(n_threads=1).resolved().use_extra_bufts)


def peer_bin(name: str) -> Path:
    return PEERS_DIR / "llama.cpp" / "build" / "bin" / name


def ensure_peers() -> None:
    """Build llama-perplexity, llama-bench, llama-batched-bench and llama-speculative from the llama.cpp inside the
    llama-cpp-python sdist (the same llama.cpp edgeeval runs), once, into PEERS_DIR."""
    tools = ["llama-perplexity", "llama-bench", "llama-batched-bench", "llama-speculative"]
    if all(peer_bin(t).exists() for t in tools):
        return
    src = PEERS_DIR / "llama.cpp"
    if not (src / "CMakeLists.txt").exists():
        sdist = PEERS_DIR / "sdist"
        sdist.mkdir(parents=True, exist_ok=True)
        local = Path(f"/tmp/src/llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp")
        if not local.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                            f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(sdist)], check=True)
            archive = next(sdist.glob("llama_cpp_python-*.tar.gz"))
            shutil.unpack_archive(str(archive), str(sdist))
            local = sdist / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"
        shutil.copytree(local, src)
    print(f"building {', '.join(tools)} in {src} (once; a few minutes)", file=sys.stderr)
    subprocess.run(["cmake", "-B", "build", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"], cwd=src, check=True,
                   stdout=subprocess.DEVNULL)
    from edgeeval.engine.machine import usable_cpus

    subprocess.run(["cmake", "--build", "build", "--target", *tools, f"-j{usable_cpus()}"], cwd=src,
                   check=True, stdout=subprocess.DEVNULL)


def run_timed(cmd: list[str], env: dict | None = None, merge_stderr: bool = True) -> tuple[str, float, float]:
    """Output, wall seconds and peak RSS (MB) of a process, run under GNU time.

    Not os.wait4's own rusage: a child started from this (large) process inherits its high-water
    RSS across fork and exec; GNU time is small, so what it reports is the command's own."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", timing.name, *cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge_stderr else None, env=env)
        seconds = time.perf_counter() - t0
        report = Path(timing.name).read_text()
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed with status {proc.returncode}:\n{out[-3000:]}")
    kbytes = next(int(line.split(":")[1]) for line in report.splitlines() if "Maximum resident set size" in line)
    return out, seconds, kbytes / 1024


def write_mc_tasks(path: Path, items: list[dict], prefix: str) -> None:
    """llama-perplexity's binary multiple-choice format: task count, byte offsets, then per task the
    question, the answers with their labels, and an empty second answer set."""

    def string(text: str) -> bytes:
        data = text.encode("utf-8")
        return struct.pack("<I", len(data)) + data

    blobs = []
    for item in items:
        blob = string(prefix + item["question"]) + struct.pack("<I", len(item["options"]))
        blob += b"".join(string(o) for o in item["options"])
        blob += struct.pack(f"<{len(item['options'])}i", *[int(i == item["gold"]) for i in range(len(item["options"]))])
        blobs.append(blob + struct.pack("<I", 0))
    offsets, pos = [], 4 + 4 * len(blobs)
    for blob in blobs:
        offsets.append(pos)
        pos += len(blob)
    path.write_bytes(struct.pack("<I", len(blobs)) + struct.pack(f"<{len(blobs)}I", *offsets) + b"".join(blobs))


def perplexity_mc(model: str, items: list[dict], prefix: str, threads: int, tmp: Path,
                  extra: tuple[str, ...] = ()) -> dict:
    tasks = tmp / "tasks.bin"
    write_mc_tasks(tasks, items, prefix)
    out, wall, rss = run_timed([str(peer_bin("llama-perplexity")), "-m", model, "-bf", str(tasks), *PPL_ARGS,
                                "-t", str(threads), *extra])
    accs = [float(line.split("\t")[1]) for line in out.splitlines()
            if line.count("\t") == 1 and line.split("\t")[0].isdigit()]
    correct = [round(a * (i + 1) / 100) for i, a in enumerate(accs)]
    per_item = [c - (correct[i - 1] if i else 0) for i, c in enumerate(correct)]
    # Its log lines carry the time since start: score from reading the tasks to the final result
    # (the model load before it is left out, as it is for edgeeval).
    seconds = _log_time(out, "Final result") - _log_time(out, "there are")
    return {"seconds": seconds, "wall_seconds": wall, "peak_rss_mb": rss, "correct": per_item,
            "accuracy": 100.0 * sum(per_item) / max(1, len(per_item)), "n_items": len(per_item)}


def _log_time(out: str, key: str) -> float:
    """Seconds since start of the first log line containing `key` ('M.SS.mmm.uuu I ...')."""
    for line in out.splitlines():
        if key in line:
            minutes, secs, millis, micros = line.split()[0].split(".")
            return int(minutes) * 60 + int(secs) + int(millis) / 1e3 + int(micros) / 1e6
    raise RuntimeError(f"llama-perplexity printed no line with {key!r}")


def llama_bench(model: str, threads: int, repeats: int, extra: tuple[str, ...] = ()) -> dict:
    out, _, _ = run_timed([str(peer_bin("llama-bench")), "-m", model, "-t", str(threads), "-p", "512", "-n", "128",
                           "-r", str(repeats), "-o", "json", *extra])
    rows = json.loads(out[out.index("[") : out.rindex("]") + 1])
    pp = next(r for r in rows if r["n_prompt"] == 512 and r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_gen"] == 128 and r["n_prompt"] == 0)
    return {"pp512": pp["avg_ts"], "tg128": tg["avg_ts"], "flash_attn": pp.get("flash_attn"),
            "n_batch": pp.get("n_batch"), "n_ubatch": pp.get("n_ubatch")}


def batched_bench(model: str, threads: int, pp: int, tg: int, sizes: tuple[int, ...],
                  extra: tuple[str, ...] = ()) -> dict:
    n_ctx = max(sizes) * (pp + tg)
    out, _, _ = run_timed([str(peer_bin("llama-batched-bench")), "-m", model, "-t", str(threads), "-c", str(n_ctx),
                           "-b", "2048", "-ub", "512", "-npp", str(pp), "-ntg", str(tg),
                           "-npl", ",".join(map(str, sizes)), "--output-format", "jsonl", *extra])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {str(r["pl"]): {"seconds": r["t"], "speed": r["speed"], "speed_tg": r["speed_tg"]} for r in rows}


# --- lm-eval -----------------------------------------------------------------------------------

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


def lmeval_gguf(model: str, items: list[dict], threads: int, tmp: Path) -> dict:
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
        return {**result, "n_items": len(items), "per_item_s": result["seconds"] / len(items)}
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


# --- scoring the loglik results the way llama-perplexity does -----------------------------------

def picks_like_perplexity(result: dict) -> list[int]:
    """llama-perplexity scores the mean log-prob of the tokens after the options' common prefix;
    from edgeeval's per-token log-probs that is the mean over the tokens no option shares."""
    picks = []
    for scores, tokens in zip(result["scores"], result["option_tokens"]):
        shared = len(os.path.commonprefix([tuple(t) for t in tokens]))
        means = []
        for score, toks in zip(scores, tokens):
            skip = max(0, shared - (len(toks) - score["n_tokens"]))
            kept = score["token_logprobs"][skip:] or score["token_logprobs"][-1:]
            means.append(sum(kept) / len(kept))
        picks.append(max(range(len(means)), key=means.__getitem__))
    return picks


# --- the run -----------------------------------------------------------------------------------

def gguf_kv_bytes(model: str, n_ctx: int) -> int:
    """Bytes of an f16 KV cache of n_ctx cells for this model (every layer full size, as with swa_full)."""
    import gguf

    reader = gguf.GGUFReader(model)
    arch = reader.fields["general.architecture"].contents()

    def field(key, default=None):
        f = reader.fields.get(f"{arch}.{key}")
        return f.contents() if f is not None else default

    n_layer, n_embd, n_head = field("block_count"), field("embedding_length"), field("attention.head_count")
    n_head_kv = field("attention.head_count_kv", n_head)
    k_len = field("attention.key_length", n_embd // n_head)
    v_len = field("attention.value_length", n_embd // n_head)
    return n_ctx * n_layer * n_head_kv * (k_len + v_len) * 2


def measure_model(model: str, args, items: list[dict], shots: list[dict], tmp: Path) -> dict:
    name = Path(model).name
    threads = args.threads
    res: dict = {"model": name, "path": model, "gguf_mb": os.path.getsize(model) / 2**20}
    base = {"model": model, "threads": threads, "n_ctx": LOGLIK_CTX}
    prefix = few_shot_prefix(shots)
    log = lambda msg: print(f"[{name}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    rounds = 1 if args.quick else 2
    for label, pre in (("zero_shot", ""), ("three_shot", prefix)):
        # Interleaved rounds, the quickest of each tool's (see below).
        ppl_runs, our_runs = [], []
        for _ in range(rounds):
            log(f"loglik {label}: llama-perplexity")
            ppl_runs.append(perplexity_mc(model, items, pre, threads, tmp))
            log(f"loglik {label}: edgeeval")
            our_runs.append(run_child({**base, "kind": "loglik", "items": items, "prefix": pre}))
        ppl = min(ppl_runs, key=lambda r: r["seconds"])
        ours = min(our_runs, key=lambda r: r["seconds"])
        picks = picks_like_perplexity(ours)
        correct = [int(p == i["gold"]) for p, i in zip(picks, items)]
        res[f"loglik_{label}"] = {
            "edgeeval_items_per_s": len(items) / ours["seconds"], "perplexity_items_per_s": ppl["n_items"] / ppl["seconds"],
            "edgeeval_accuracy": 100.0 * sum(correct) / len(items), "perplexity_accuracy": ppl["accuracy"],
            "same_correctness": sum(a == b for a, b in zip(correct, ppl["correct"])),
            "edgeeval_peak_rss_mb": max(r["peak_rss_mb"] for r in our_runs),
            "perplexity_peak_rss_mb": max(r["peak_rss_mb"] for r in ppl_runs),
            "python_overhead": 1 - ours["decode_seconds"] / ours["seconds"],
            "prompt_tokens": ours["prompt_tokens"], "prompt_tokens_decoded": ours["prompt_tokens_decoded"],
            "edgeeval_settings": ours["settings"],
            "rounds": {"edgeeval_seconds": [r["seconds"] for r in our_runs],
                       "perplexity_seconds": [r["seconds"] for r in ppl_runs]}}
        res[f"loglik_{label}"]["ratio"] = (res[f"loglik_{label}"]["edgeeval_items_per_s"]
                                            / res[f"loglik_{label}"]["perplexity_items_per_s"])
        # Diagnostic: the peer with flash attention off computes what edgeeval computes (same kernels),
        # so accuracy there shows whether a gap in accuracy is the attention kernel's rounding.
        log(f"loglik {label}: llama-perplexity -fa off (diagnostic)")
        off = perplexity_mc(model, items, pre, threads, tmp, ("-fa", "off"))
        res[f"loglik_{label}"]["perplexity_fa_off"] = {
            "items_per_s": off["n_items"] / off["seconds"], "accuracy": off["accuracy"],
            "same_correctness_as_edgeeval": sum(a == b for a, b in zip(correct, off["correct"])),
            "ratio": res[f"loglik_{label}"]["edgeeval_items_per_s"] / (off["n_items"] / off["seconds"])}
        if label == "zero_shot":
            # The profile of the gap to llama-perplexity: the same scoring with flash attention on (as the
            # peer runs; edgeeval leaves it off because its CPU kernel's results change with batch layout).
            log("loglik zero_shot: edgeeval with flash attention (diagnostic)")
            fa = run_child({**base, "kind": "loglik", "items": items, "prefix": pre, "flash_attn": True})
            fa_correct = [int(p == i["gold"]) for p, i in zip(picks_like_perplexity(fa), items)]
            res["loglik_zero_shot_flash_attn"] = {
                "edgeeval_items_per_s": len(items) / fa["seconds"],
                "accuracy": 100.0 * sum(fa_correct) / len(items),
                "same_correctness_as_perplexity": sum(a == b for a, b in zip(fa_correct, ppl["correct"])),
                "ratio": len(items) / fa["seconds"] / res[f"loglik_{label}"]["perplexity_items_per_s"],
                "python_overhead": 1 - fa["decode_seconds"] / fa["seconds"]}
            kv = gguf_kv_bytes(model, LOGLIK_CTX) / 2**20
            peak = res[f"loglik_{label}"]["edgeeval_peak_rss_mb"]
            res["rss"] = {"peak_rss_mb": peak, "gguf_mb": res["gguf_mb"], "kv_cache_mb": kv,
                          "overhead_mb": peak - res["gguf_mb"] - kv}

    # Interleaved rounds, best of each: on a shared machine one round is at the mercy of the others
    # (seen here: the same measurement 15% apart in two runs twenty minutes apart).
    benches, letter_runs, tg_runs = [], [], []
    for _ in range(rounds):
        log("llama-bench pp512 / tg128")
        benches.append(llama_bench(model, threads, 2 if args.quick else 3))
        log("letter fast path")
        letter_runs.append(run_child({**base, "kind": "letters", "items": items, "n_ctx": 2048}))
        log("single-sequence generation")
        tg_runs.append(run_child({**base, "kind": "tg", "n_ctx": 2048, "n_gen": 128, "repeats": 2}))
    bench = {"pp512": max(b["pp512"] for b in benches), "tg128": max(b["tg128"] for b in benches),
             "flash_attn": benches[0]["flash_attn"], "rounds": benches}
    log("llama-bench pp512 / tg128 with -fa off (diagnostic: edgeeval's attention kernels)")
    bench["fa_off"] = llama_bench(model, threads, 2 if args.quick else 3, ("-fa", "off"))
    letters = min(letter_runs, key=lambda r: r["seconds"])
    tg = max(tg_runs, key=lambda r: r["tokens_per_s"])
    res["letters"] = {"tokens_per_s": letters["tokens_decoded"] / letters["seconds"], "pp512": bench["pp512"],
                      "items_per_s": letters["n_items"] / letters["seconds"],
                      "accuracy": 100.0 * sum(p == i["gold"] for p, i in zip(letters["picks"], items)) / len(items),
                      "tokens_decoded": letters["tokens_decoded"], "prompt_tokens": letters["prompt_tokens"],
                      "python_overhead": 1 - letters["decode_seconds"] / letters["seconds"]}
    res["letters"]["fraction"] = res["letters"]["tokens_per_s"] / bench["pp512"]
    res["tg"] = {"tokens_per_s": tg["tokens_per_s"], "tg128": bench["tg128"], "fraction": tg["tokens_per_s"] / bench["tg128"],
                 "fraction_vs_fa_off": tg["tokens_per_s"] / bench["fa_off"]["tg128"]}
    res["letters"]["fraction_vs_fa_off"] = res["letters"]["tokens_per_s"] / bench["fa_off"]["pp512"]
    res["llama_bench"] = bench

    pp, tg_len = (128, 32) if args.quick else (256, 64)
    texts = [item["question"] for item in items] + [s["question"] for s in shots]
    peers, ours_runs = [], []
    for _ in range(rounds):
        log(f"batched generation: llama-batched-bench pp={pp} tg={tg_len}")
        peers.append(batched_bench(model, threads, pp, tg_len, BATCH_SIZES))
        log("batched generation: edgeeval")
        ours_runs.append(run_child({**base, "kind": "batched", "texts": texts, "pp": pp, "tg": tg_len,
                                    "sizes": list(BATCH_SIZES), "n_ctx": max(BATCH_SIZES) * (pp + tg_len) + 256}))
    log("batched generation: llama-batched-bench -fa off (diagnostic)")
    peer_fa_off = batched_bench(model, threads, pp, tg_len, BATCH_SIZES, ("-fa", "off"))
    # Per size, each tool's quickest round.
    peer = {pl: max((p[pl] for p in peers), key=lambda r: r["speed"]) for pl in peers[0]}
    ours = {"sizes": {pl: min((o["sizes"][pl] for o in ours_runs), key=lambda r: r["seconds"])
                      for pl in ours_runs[0]["sizes"]},
            "one_at_a_time": min((o["one_at_a_time"] for o in ours_runs), key=lambda r: r["seconds"]),
            "pp_mean": ours_runs[0]["pp_mean"]}
    curve = {}
    for pl in map(str, BATCH_SIZES):
        o = ours["sizes"][pl]
        speed = (o["prompt_tokens"] + o["generated"]) / o["seconds"]
        curve[pl] = {"edgeeval_tokens_per_s": speed, "batched_bench_tokens_per_s": peer[pl]["speed"],
                     "fraction": speed / peer[pl]["speed"], "generated": o["generated"],
                     "batched_bench_fa_off_tokens_per_s": peer_fa_off[pl]["speed"],
                     "fraction_vs_fa_off": speed / peer_fa_off[pl]["speed"],
                     "expected": int(pl) * tg_len}
    single = ours["one_at_a_time"]
    single_speed = (single["prompt_tokens"] + single["generated"]) / single["seconds"]
    top = str(max(BATCH_SIZES))
    res["batched"] = {"pp": pp, "tg": tg_len, "pp_mean": ours["pp_mean"], "curve": curve,
                      "one_at_a_time_tokens_per_s": single_speed,
                      "speedup_over_one_at_a_time": curve[top]["edgeeval_tokens_per_s"] / single_speed,
                      "same_text_as_one_at_a_time": sum(a == b for a, b in zip(ours["sizes"][top]["texts"], single["texts"])),
                      "n_compared": len(single["texts"])}
    return res


def match_rate(model: str, args, items: list[dict]) -> dict:
    """Greedy answers to the case challenges as `edgeeval run --parallel 8` would send them (the
    runner's chat-templated prompts), batched vs one at a time."""
    prompts, ids, how = runner_prompts(model)
    out = run_child({"model": model, "threads": args.threads, "n_ctx": 8192, "kind": "match", "prompts": prompts,
                     "max_tokens": 32 if args.quick else 128, "n_parallel": 8})
    same = sum(a == b for a, b in zip(out["batched"], out["single"]))
    return {"same": same, "n": len(prompts), "rate": same / len(prompts), "prompts": how,
            "differing": [{"id": i, "batched": a, "single": b, "first_difference": first_difference(a, b)}
                          for i, a, b in zip(ids, out["batched"], out["single"]) if a != b]}


def runner_prompts(model: str, task: str = "case_challenges", limit: int | None = None) -> tuple[list[str], list[str], str]:
    """The prompts the runner builds for this GGUF and task: with its models.toml entry's chat
    template when the file is one of the configured models, else with the GGUF's own template."""
    from edgeeval.config.models import ModelSpec, load_models_config, resolve_model_path
    from edgeeval.errors import EdgeevalError
    from edgeeval.run.planning import plan_units, prepare_model, prepare_task

    project = load_models_config(ROOT / "models.toml")
    name = None
    for candidate in project.config.models:
        try:
            if resolve_model_path(project, candidate).resolve() == Path(model).resolve():
                name = candidate
                break
        except EdgeevalError:
            continue
    if name is None:  # a GGUF of the user's: its own chat template
        name = "_measured"
        models = {**project.config.models, name: ModelSpec(path=str(Path(model).resolve()), family="general")}
        project = project.model_copy(update={"config": project.config.model_copy(update={"models": models})})
    units, _ = plan_units(prepare_model(project, name), prepare_task(project, task, None, limit))
    units = [u for u in units if u.failure is None]
    return [u.prompt for u in units], [u.example.id for u in units], f"runner prompts of model '{name}'"


# --- speculative decoding and --parallel auto on a realistic model ------------------------------

SUMMARY_TASKS = ("meqsum", "problem_summary", "medisumqa")
OTHER_GENERATION_TASKS = ("case_challenges", "medqa", "mednli", "pubmedqa", "medisumcode")
EXTRA_MODELS = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")
EXTRA_HINT = "the Qwen 1.5B/0.5B pair is not installed: make models-extra (or scripts/setup.sh --extra-models)"


def extra_models() -> tuple[str, str] | None:
    """(target, draft) paths of the opt-in Qwen pair, or None with one line saying how to get them."""
    from edgeeval.config.models import load_models_config, resolve_model_path
    from edgeeval.errors import EdgeevalError

    project = load_models_config(ROOT / "models.toml")
    try:
        target, draft = (str(resolve_model_path(project, name)) for name in EXTRA_MODELS)
    except EdgeevalError:
        print(EXTRA_HINT, file=sys.stderr)
        return None
    return target, draft


def task_spec(task: str):
    from edgeeval.config.models import load_models_config
    from edgeeval.run.planning import prepare_task

    return prepare_task(load_models_config(ROOT / "models.toml"), task, None, 1).spec


def speculative_run(model: str, args, tasks: tuple[str, ...], method: str, limit: int,
                    draft: str | None = None) -> dict:
    """Plain greedy vs `method` on the bundled examples of `tasks` (the runner's prompts): tokens/s of
    the answers, acceptance, and every answer that differs with the first character where it does."""
    out = {"method": method, "draft": Path(draft).name if draft else None, "tasks": {}}
    for task in tasks:
        prompts, ids, _ = runner_prompts(model, task, limit)
        spec = task_spec(task)
        max_tokens = min(spec.max_tokens, args.spec_max_tokens)
        print(f"[{Path(model).name}] {method} vs plain on {task} ({len(prompts)} examples, load "
              f"{os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        res = run_child({"model": model, "draft": draft, "threads": args.threads, "n_ctx": 4096,
                         "n_draft": args.n_draft, "kind": "speculative", "prompts": prompts,
                         "max_tokens": max_tokens, "stop": list(spec.stop), "method": method})
        examples = res["examples"]
        plain_s = sum(e["plain"]["seconds"] for e in examples)
        spec_s = sum(e["speculative"]["seconds"] for e in examples)
        drafted = sum(e["speculative"].get("drafted", 0) for e in examples)
        accepted = sum(e["speculative"].get("accepted", 0) for e in examples)
        out["tasks"][task] = {
            "n": len(examples), "max_tokens": max_tokens,
            "plain_tokens_per_s": sum(e["plain"]["tokens"] for e in examples) / plain_s,
            "speculative_tokens_per_s": sum(e["speculative"]["tokens"] for e in examples) / spec_s,
            "speedup": plain_s / spec_s, "drafted": drafted, "accepted": accepted,
            "speculative_tokens": sum(e["speculative"]["tokens"] for e in examples), "speculative_seconds": spec_s,
            "prompt_seconds": sum(e["prompt_seconds"] for e in examples),
            "draft_prompt_seconds": sum(e["draft_prompt_seconds"] for e in examples),
            # An evaluation pays for the prompts too: the target's in both paths, the draft model's as well.
            "speedup_with_prompts": (plain_s + sum(e["prompt_seconds"] for e in examples))
            / (spec_s + sum(e["prompt_seconds"] + e["draft_prompt_seconds"] for e in examples)),
            "acceptance": accepted / drafted if drafted else None,
            "same": sum(e["plain"]["text"] == e["speculative"]["text"] for e in examples),
            "differing": [{"id": i, "first_difference": first_difference(e["plain"]["text"], e["speculative"]["text"]),
                           "plain": e["plain"]["text"], "speculative": e["speculative"]["text"]}
                          for i, e in zip(ids, examples) if e["plain"]["text"] != e["speculative"]["text"]],
            "load_average": os.getloadavg()[0],
        }
    out["speedup"] = _pooled(out["tasks"], "speedup")
    out["acceptance"] = (sum(t["accepted"] for t in out["tasks"].values())
                         / max(1, sum(t["drafted"] for t in out["tasks"].values())))
    out["same_rate"] = sum(t["same"] for t in out["tasks"].values()) / max(1, sum(t["n"] for t in out["tasks"].values()))
    return out


def _pooled(tasks: dict, key: str) -> float:
    """The geometric mean over tasks (each task weighs the same, whatever its answer lengths)."""
    values = [t[key] for t in tasks.values()]
    product = 1.0
    for v in values:
        product *= v
    return product ** (1 / len(values)) if values else float("nan")


def llama_speculative(target: str, draft: str, args, tasks: tuple[str, ...], limit: int) -> dict:
    """llama.cpp's own llama-speculative on the same pair, prompts, draft length, draft cut-off and threads."""
    import re

    from edgeeval.engine.drafting import DRAFT_P_MIN

    decoded = seconds = drafted = accepted = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            prompts, _, _ = runner_prompts(target, task, limit)
            n = min(task_spec(task).max_tokens, args.spec_max_tokens)
            for prompt in prompts:
                path = Path(tmp) / "prompt.txt"
                path.write_text(prompt)
                out, _, _ = run_timed([str(peer_bin("llama-speculative")), "-m", target, "-md", draft, "-f", str(path),
                                       "-n", str(n), "--temp", "0", "--spec-draft-n-max", str(args.n_draft),
                                       "--spec-draft-p-min", str(DRAFT_P_MIN), "-t",
                                       str(args.threads), "-td", str(args.threads), "-c", "4096", "-fa", "off",
                                       *(() if edgeeval_repacks() else ("-nr",))])
                m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", out)
                decoded += int(m.group(1))
                seconds += float(m.group(2))
                drafted += int(re.search(r"n_drafted = (\d+)", out).group(1))
                accepted += int(re.search(r"n_accept\s+= (\d+)", out).group(1))
    return {"tokens_per_s": decoded / seconds, "acceptance": accepted / drafted if drafted else None,
            "decoded": decoded, "seconds": seconds}


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def print_table(results: dict) -> None:
    rows = []
    for r in results["models"]:
        m = r["model"]
        for label in ("zero_shot", "three_shot"):
            x = r[f"loglik_{label}"]
            rows.append((m, f"loglik {label} items/s", f"{x['edgeeval_items_per_s']:.2f}",
                         f"perplexity {x['perplexity_items_per_s']:.2f}", f"{x['ratio']:.2f}x"))
            rows.append((m, f"  accuracy {label}", f"{x['edgeeval_accuracy']:.1f}",
                         f"perplexity {x['perplexity_accuracy']:.1f}", ""))
            rows.append((m, f"  peak RSS MB {label}", f"{x['edgeeval_peak_rss_mb']:.0f}",
                         f"perplexity {x['perplexity_peak_rss_mb']:.0f}", ""))
            if "perplexity_fa_off" in x:
                off = x["perplexity_fa_off"]
                rows.append((m, "  (diagnostic) perplexity -fa off", f"{x['edgeeval_items_per_s']:.2f}",
                             f"items/s {off['items_per_s']:.2f}, accuracy {off['accuracy']:.1f}", f"{off['ratio']:.2f}x"))
            if label == "zero_shot" and "loglik_zero_shot_flash_attn" in r:
                fa = r["loglik_zero_shot_flash_attn"]
                rows.append((m, "  (diagnostic) edgeeval with flash attn", f"{fa['edgeeval_items_per_s']:.2f}",
                             f"accuracy {fa.get('accuracy', float('nan')):.1f}", f"{fa['ratio']:.2f}x"))
        off = r["llama_bench"].get("fa_off", {})
        rows.append((m, "letter path tok/s", f"{r['letters']['tokens_per_s']:.0f}", f"pp512 {r['letters']['pp512']:.0f}",
                     f"{r['letters']['fraction']:.2f}"))
        if off:
            rows.append((m, "  (diagnostic) vs pp512 -fa off", "", f"pp512 {off['pp512']:.0f}",
                         f"{r['letters']['fraction_vs_fa_off']:.2f}"))
        rows.append((m, "generation tok/s", f"{r['tg']['tokens_per_s']:.1f}", f"tg128 {r['tg']['tg128']:.1f}",
                     f"{r['tg']['fraction']:.2f}"))
        if off:
            rows.append((m, "  (diagnostic) vs tg128 -fa off", "", f"tg128 {off['tg128']:.1f}",
                         f"{r['tg']['fraction_vs_fa_off']:.2f}"))
        for pl, c in r["batched"]["curve"].items():
            rows.append((m, f"batched pl={pl} tok/s", f"{c['edgeeval_tokens_per_s']:.0f}",
                         f"batched-bench {c['batched_bench_tokens_per_s']:.0f} (-fa off "
                         f"{c.get('batched_bench_fa_off_tokens_per_s', float('nan')):.0f})",
                         f"{c['fraction']:.2f} ({c.get('fraction_vs_fa_off', float('nan')):.2f})"))
        rows.append((m, "batched speedup vs own loop", f"{r['batched']['speedup_over_one_at_a_time']:.2f}x", "", ""))
        rows.append((m, "RSS overhead MB", f"{r['rss']['overhead_mb']:.0f}",
                     f"gguf {r['rss']['gguf_mb']:.0f} + kv {r['rss']['kv_cache_mb']:.0f}", ""))
        rows.append((m, "python overhead", f"{100 * r['loglik_zero_shot']['python_overhead']:.1f}%", "", ""))
    if results.get("lmeval"):
        lm = results["lmeval"]
        rows.append((lm["model"], "lm-eval gguf s/item", f"{lm['edgeeval_per_item_s']:.2f}",
                     f"lm-eval {lm['per_item_s']:.1f}", f"{lm['ratio']:.0f}x"))
    for m in results.get("match", []):
        rows.append((m["model"], "batched = one-at-a-time (runner prompts)", f"{m['same']}/{m['n']}", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def summary_line(results: dict) -> str:
    models = results["models"]

    def worst(values):
        return min(values) if values else float("nan")

    lm = results.get("lmeval")
    fields = {
        "ratio_vs_lmeval": lm["ratio"] if lm else float("nan"),
        "ratio_vs_perplexity": worst([m["loglik_zero_shot"]["ratio"] for m in models]),
        "ratio_vs_perplexity_3shot": worst([m["loglik_three_shot"]["ratio"] for m in models]),
        "pp_fraction": worst([m["letters"]["fraction"] for m in models]),
        "tg_fraction": worst([m["tg"]["fraction"] for m in models]),
        "batched_fraction": worst([c["fraction"] for m in models for c in m["batched"]["curve"].values()]),
        "rss_overhead_mb": max(m["rss"]["overhead_mb"] for m in models),
    }
    return " ".join(f"{k}={v:.2f}" for k, v in fields.items())


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def prompt_bench(model: str, threads: int, lengths: list[int], repeats: int = 3) -> dict:
    """llama-bench prompt processing (tok/s) at each length, flash attention on (its default) and off."""
    out, _, _ = run_timed([str(peer_bin("llama-bench")), "-m", model, "-t", str(threads), "-n", "0",
                           "-p", ",".join(map(str, lengths)), "-fa", "1,0", "-r", str(repeats), "-o", "json"])
    rows = json.loads(out[out.index("[") : out.rindex("]") + 1])
    return {f"pp{r['n_prompt']}_fa_{'on' if r['flash_attn'] else 'off'}": r["avg_ts"] for r in rows}


# The peer's variants for batched generation: as its users run it, then step by step closer to what edgeeval's
# batched context does (no flash attention; the full cache for sliding-window layers, kept so that batched and
# one-at-a-time answers agree).
BATCHED_VARIANTS = {"as_run": (), "fa_off": ("-fa", "off"), "fa_off_swa_full": ("-fa", "off", "--swa-full")}


def profile_misses(args) -> dict:
    """The profile behind the demo models' three misses of the full run (gemma's letter path at 0.86 of pp512 and
    batched generation at 0.77 of llama-batched-bench at 8 sequences; SmolLM2's zero-shot loglik at 0.97x
    llama-perplexity): each measured `--rounds` times, edgeeval and its peer interleaved, with edgeeval's time
    inside llama_decode and the peer's variant that runs the kernels edgeeval runs."""
    ensure_peers()
    started = machine()
    items, _ = load_items()
    gemma, smollm2 = default_models()
    threads = args.threads
    log = lambda msg: print(f"[misses] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    letters, batched, loglik = [], [], []
    texts = [item["question"] for item in items]
    with tempfile.TemporaryDirectory(prefix="edgeeval-misses-") as tmp:
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}: gemma letter path, then llama-bench at pp512 and at its prompt length")
            ours = run_child({"model": gemma, "threads": threads, "kind": "letters", "items": items, "n_ctx": 2048})
            length = round(ours["tokens_decoded"] / ours["n_items"])
            bench = prompt_bench(gemma, threads, [512, length])
            letters.append({"tokens_per_s": ours["tokens_decoded"] / ours["seconds"],
                            "tokens_per_s_in_decode": ours["tokens_decoded"] / ours["decode_seconds"],
                            "mean_prompt_tokens": length, **bench})
            log(f"round {r + 1}: gemma batched generation at 8 sequences, then llama-batched-bench variants")
            run = run_child({"model": gemma, "threads": threads, "kind": "batched", "texts": texts, "pp": 256,
                             "tg": 64, "sizes": [8], "one_at_a_time": False, "n_ctx": 8 * (256 + 64) + 256})
            eight = run["sizes"]["8"]
            tokens = eight["prompt_tokens"] + eight["generated"]
            row = {"tokens_per_s": tokens / eight["seconds"], "tokens_per_s_in_decode": tokens / eight["decode_seconds"],
                   "decode_calls": eight["decode_calls"]}
            for name, extra in BATCHED_VARIANTS.items():
                row[f"batched_bench_{name}"] = batched_bench(gemma, threads, 256, 64, (8,), extra)["8"]["speed"]
            batched.append(row)
            log(f"round {r + 1}: SmolLM2 zero-shot loglik, llama-perplexity then edgeeval")
            ppl = perplexity_mc(smollm2, items, "", threads, Path(tmp))
            ours = run_child({"model": smollm2, "threads": threads, "n_ctx": LOGLIK_CTX, "kind": "loglik",
                              "items": items, "prefix": ""})
            off = perplexity_mc(smollm2, items, "", threads, Path(tmp), ("-fa", "off"))
            loglik.append({"edgeeval_items_per_s": len(items) / ours["seconds"],
                           "edgeeval_items_per_s_in_decode": len(items) / ours["decode_seconds"],
                           "perplexity_items_per_s": ppl["n_items"] / ppl["seconds"],
                           "perplexity_fa_off_items_per_s": off["n_items"] / off["seconds"]})
    n = letters[0]["mean_prompt_tokens"]
    return {
        "machine": started, "threads": threads, "rounds": args.rounds,
        "letter_path_gemma": {
            "mean_prompt_tokens": n,
            "fraction_vs_pp512": _spread([r["tokens_per_s"] / r["pp512_fa_on"] for r in letters]),
            "fraction_vs_pp512_fa_off": _spread([r["tokens_per_s"] / r["pp512_fa_off"] for r in letters]),
            f"fraction_vs_pp{n}_fa_off": _spread([r["tokens_per_s"] / r[f"pp{r['mean_prompt_tokens']}_fa_off"]
                                                   for r in letters]),
            "python_overhead": _spread([1 - r["tokens_per_s"] / r["tokens_per_s_in_decode"] for r in letters]),
            "runs": letters},
        "batched_8_gemma": {
            **{f"fraction_vs_{name}": _spread([r["tokens_per_s"] / r[f"batched_bench_{name}"] for r in batched])
               for name in BATCHED_VARIANTS},
            "python_overhead": _spread([1 - r["tokens_per_s"] / r["tokens_per_s_in_decode"] for r in batched]),
            "runs": batched},
        "loglik_smollm2": {
            "ratio_vs_perplexity": _spread([r["edgeeval_items_per_s"] / r["perplexity_items_per_s"] for r in loglik]),
            "ratio_vs_perplexity_fa_off": _spread([r["edgeeval_items_per_s"] / r["perplexity_fa_off_items_per_s"]
                                                   for r in loglik]),
            "python_overhead": _spread([1 - r["edgeeval_items_per_s"] / r["edgeeval_items_per_s_in_decode"]
                                        for r in loglik]),
            "runs": loglik},
        "load_average_end": os.getloadavg()}


def divergence_profile(args) -> list[dict]:
    """Why speculative answers can part from plain greedy ones, measured without any drafting: on both demo models
    and every bundled generation task (`--spec-limit` examples each), plain greedy's tokens decoded one at a time
    against the same tokens decoded 1 (control) and n_draft + 1 at a time. Every position where the greedy token
    differs is listed with plain's top-two margin there and how far the wider decode moved that gap."""
    out = []
    for model in default_models():
        prompts = []
        for task in SUMMARY_TASKS + OTHER_GENERATION_TASKS:
            texts, ids, _ = runner_prompts(model, task, args.spec_limit)
            max_tokens = min(task_spec(task).max_tokens, args.spec_max_tokens)
            prompts += [(task, i, t, max_tokens) for i, t in zip(ids, texts)]
        for chunk in (1, args.n_draft + 1):
            print(f"[divergence] {Path(model).name}: {len(prompts)} answers decoded {chunk} token(s) at a time",
                  file=sys.stderr, flush=True)
            runs = [run_child({"model": model, "threads": args.threads, "n_ctx": 4096, "kind": "divergence",
                               "chunk": chunk, "prompts": [text], "max_tokens": max_tokens,
                               "flash_attn": args.flash_attn})["prompts"][0]
                    for _, _, text, max_tokens in prompts]
            flips = [{"task": task, "id": i, "position": n, **p} for (task, i, _, _), run in zip(prompts, runs)
                     for n, p in enumerate(run["positions"]) if p["flip"]]
            deltas = [p["max_abs_delta"] for run in runs for p in run["positions"]]
            margins = [p["margin"] for run in runs for p in run["positions"]]
            median = statistics.median(deltas)
            out.append({"model": Path(model).name, "chunk": chunk, "flash_attn": args.flash_attn,
                        "answers": len(runs), "positions": len(deltas),
                        "positions_with_another_token": len(flips),
                        "answers_with_another_token": len({(f["task"], f["id"]) for f in flips}),
                        "max_abs_logit_delta": {"median": median, "max": max(deltas)},
                        "share_of_positions_with_margin_below_median_delta":
                            sum(m < median for m in margins) / len(margins),
                        "flips": flips})
    return out


def print_misses(misses: dict) -> None:
    for part in ("letter_path_gemma", "batched_8_gemma", "loglik_smollm2"):
        for key, value in misses[part].items():
            if isinstance(value, dict) and "median" in value:
                print(f"{part:20s} {key:32s} median {value['median']:.3f}  "
                      f"[{value['min']:.3f}, {value['max']:.3f}] over {len(value['rounds'])} rounds")


def measure_realistic(args, results: dict) -> dict | None:
    """The Qwen 1.5B section: prompt lookup and 0.5B drafting vs plain greedy (and vs llama-speculative),
    and the batched curve with the --parallel auto choice. Returns the summary fields it measured."""
    pair = extra_models()
    if pair is None:
        return None
    target, draft = pair
    # The parts measured now replace their own entries; the others (from an earlier run) stay.
    section: dict = results.setdefault("realistic", {})
    section.update({"model": Path(target).name, "draft_model": Path(draft).name, "repack": edgeeval_repacks()})
    fields: dict = {}
    if "lookup" in args.parts:
        section["lookup"] = speculative_run(target, args, SUMMARY_TASKS, "lookup", args.spec_limit)
        fields["lookup_speedup"] = section["lookup"]["speedup"]
    if "draft" in args.parts:
        section["draft"] = speculative_run(target, args, SUMMARY_TASKS + ("case_challenges",), "draft",
                                           args.spec_limit, draft=draft)
        fields["draft_speedup"] = section["draft"]["speedup"]
        if peer_bin("llama-speculative").exists():
            try:  # a peer that fails (its options change between llama.cpp versions) costs its figure only
                peer = llama_speculative(target, draft, args, SUMMARY_TASKS + ("case_challenges",), args.spec_limit)
            except RuntimeError as exc:
                section["llama_speculative"] = {"error": str(exc)[-2000:]}
                print(f"llama-speculative failed; no peer ratio: {str(exc).splitlines()[0]}", file=sys.stderr)
            else:
                section["llama_speculative"] = peer
                ours = _pooled_rate(section["draft"]["tasks"])
                fields["ratio_vs_llama_speculative"] = ours / peer["tokens_per_s"]
    if "single" in args.parts:
        # One sequence: prompt processing (the letter path over the case challenges) and generation (128
        # tokens), against llama-bench pp512 / tg128, repacking weights as edgeeval does on this CPU.
        letters = run_child({"model": target, "threads": args.threads, "n_ctx": 2048, "kind": "letters",
                             "items": load_items()[0]})
        tg = run_child({"model": target, "threads": args.threads, "n_ctx": 2048, "kind": "tg", "n_gen": 128,
                        "repeats": 2})
        single = {"pp_tokens_per_s": letters["tokens_decoded"] / letters["seconds"], "tg_tokens_per_s": tg["tokens_per_s"]}
        if peer_bin("llama-bench").exists():
            bench = llama_bench(target, args.threads, 2, ("--repack", "1" if edgeeval_repacks() else "0"))
            single.update({"llama_bench_pp512": bench["pp512"], "llama_bench_tg128": bench["tg128"],
                           "pp_fraction": single["pp_tokens_per_s"] / bench["pp512"],
                           "tg_fraction": single["tg_tokens_per_s"] / bench["tg128"]})
        section["single"] = single
    if "batched" in args.parts:
        from edgeeval.config.gguf import read_gguf_metadata
        from edgeeval.engine.batching import auto_parallel
        from edgeeval.engine.memory import kv_cache_bytes

        sizes = (1, 2, 4, 8, 16)
        pp, tg = 128, 32 if args.quick else 64
        texts = [item["question"] for item in load_items()[0]]
        ours = run_child({"model": target, "threads": args.threads, "n_ctx": 4096, "kind": "batched",
                          "texts": texts[: max(sizes)], "pp": pp, "tg": tg, "sizes": list(sizes)})
        # Generated tokens per second (what --parallel buys an evaluation) and, as llama-batched-bench
        # counts its "speed", prompt and generated tokens together per second (what the peer is compared on).
        curve = {n: ours["sizes"][n]["generated"] / ours["sizes"][n]["seconds"] for n in ours["sizes"]}
        total = {n: (ours["sizes"][n]["prompt_tokens"] + ours["sizes"][n]["generated"]) / ours["sizes"][n]["seconds"]
                 for n in ours["sizes"]}
        auto = auto_parallel(os.path.getsize(target), kv_cache_bytes(read_gguf_metadata(target).metadata, 4096),
                             args.threads)
        section["batched"] = {"pp": pp, "tg": tg, "edgeeval_tokens_per_s": curve, "edgeeval_total_tokens_per_s": total,
                              "auto": auto, "load_average": os.getloadavg()[0]}
        if peer_bin("llama-batched-bench").exists():
            peer = batched_bench(target, args.threads, pp, tg, sizes, () if edgeeval_repacks() else ("-nr",))
            section["batched"]["batched_bench_tokens_per_s"] = {n: peer[n]["speed"] for n in peer}
            section["batched"]["batched_bench_tg_tokens_per_s"] = {n: peer[n]["speed_tg"] for n in peer}
            section["batched"]["fraction_of_batched_bench"] = {n: total[n] / peer[n]["speed"] for n in peer if n in total}
        fields["parallel_auto"] = auto
        fields["auto_speedup"] = curve[str(auto)] / curve["1"]
    if "single" in section and "batched" in section:
        section["projection_8b"] = projection_8b(section)
    section["summary"] = {**section.get("summary", {}), **fields}
    return fields


LLAMA3_8B = {"name": "Llama-3-8B-Instruct Q4_K_M", "params": 8.03e9}
QWEN_15B_PARAMS = 1.54e9


def projection_8b(section: dict) -> dict:
    """The study's task suite for one 8B pair (both models) on this machine: the 1.5B's measured one-sequence
    throughputs divided by the parameter ratio (8.03B / 1.54B), the suite's sizes and prompt lengths those
    of benchmarks/scale (results.json, `paper`), half of each task's max_tokens generated; with --parallel 1,
    and with --parallel auto, whose gain on generation is the 1.5B's measured one at its auto choice.
    Prompt lookup and drafting are left out: they did not pay here (see the lookup and draft entries)."""
    from edgeeval.config.locations import BUILTIN_ROOT
    from edgeeval.config.models import load_task

    paper = json.loads((Path(__file__).resolve().parent.parent / "scale" / "results.json").read_text())["paper"]
    scale = LLAMA3_8B["params"] / QWEN_15B_PARAMS
    pp, tg = section["single"]["pp_tokens_per_s"] / scale, section["single"]["tg_tokens_per_s"] / scale
    batched = section["batched"]
    gain = batched["edgeeval_tokens_per_s"][str(batched["auto"])] / batched["edgeeval_tokens_per_s"]["1"]
    share = paper["generated_share_of_max_tokens"]
    examples = prompt_tokens = generated = 0.0
    for task, size in paper["tasks"].items():
        max_tokens = load_task(BUILTIN_ROOT / "benchmarks" / "clinical" / f"{task}.toml").max_tokens
        examples += 2 * size["examples"]
        prompt_tokens += 2 * size["examples"] * size["prompt_tokens"]
        generated += 2 * size["examples"] * max_tokens * share
    hours_plain = (prompt_tokens / pp + generated / tg) / 3600
    hours_auto = (prompt_tokens / pp + generated / (tg * gain)) / 3600
    return {"model": LLAMA3_8B["name"], "parameter_ratio": scale, "prompt_tokens_per_s": pp, "gen_tokens_per_s": tg,
            "parallel_auto_gain": gain, "examples": examples, "prompt_tokens": prompt_tokens,
            "generated_tokens": generated, "hours_parallel_1": hours_plain, "hours_parallel_auto": hours_auto,
            "assumptions": projection_8b.__doc__}


def _pooled_rate(tasks: dict) -> float:
    """Tokens per second of the speculative answers over all tasks together."""
    return sum(t["speculative_tokens"] for t in tasks.values()) / sum(t["speculative_seconds"] for t in tasks.values())


def equality_on_demo_models(args) -> list[dict]:
    """Prompt lookup vs plain greedy on every bundled generation task, on both demo models."""
    out = []
    for model in default_models():
        run = speculative_run(model, args, SUMMARY_TASKS + OTHER_GENERATION_TASKS, "lookup", args.spec_limit)
        out.append({"model": Path(model).name, **run})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter generations, fewer repeats (a few minutes)")
    parser.add_argument("--model", action="append", help="GGUF to measure (repeatable); default: the bundled demo models")
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
    parser.add_argument("--n-draft", type=int, default=8, help="tokens drafted per step (edgeeval and llama-speculative)")
    parser.add_argument("--misses", action="store_true",
                        help="only the profile behind the demo models' misses (merged into results.json as 'misses')")
    parser.add_argument("--divergence", action="store_true",
                        help="with --misses: only the profile of where multi-token decodes pick another greedy token")
    parser.add_argument("--flash-attn", action="store_true",
                        help="with --divergence: both paths with flash attention on (edgeeval leaves it off)")
    parser.add_argument("--rounds", type=int, default=5, help="with --misses: interleaved rounds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(Path(args.child).read_text()))))
        return 0
    from edgeeval.engine.machine import default_threads

    args.threads = args.threads or default_threads()
    args.parts = set(args.parts.split(","))
    if args.misses:
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        if args.divergence:
            key = "divergence_flash_attn" if args.flash_attn else "divergence"
            results[key] = divergence_profile(args)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            for row in results[key]:
                print(json.dumps({k: v for k, v in row.items() if k != "flips"}))
                for flip in row["flips"][:12]:
                    print(f"   {flip['task']} {flip['id']} @{flip['position']}: margin {flip['margin']:.3f}, "
                          f"gap moved {flip['gap_moved']:.3f}, max |delta| {flip['max_abs_delta']:.3f}")
            return 0
        results["misses"] = profile_misses(args)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print_misses(results["misses"])
        return 0
    if args.realistic_only:
        # Merged into the results of the last full run (kept as they are), not written over them.
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        if "equality" in args.parts:
            results["equality_demo_models"] = equality_on_demo_models(args)
        started = machine()
        fields = measure_realistic(args, results) or {}
        if "realistic" in results:
            results["realistic"].update({"machine": {**started, "load_average_end": os.getloadavg()},
                                         "threads": args.threads, "quick": args.quick})
        results["summary"] = {**results.get("summary", {}), **fields}
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))
        return 0
    models = args.model or default_models()
    ensure_peers()
    items, shots = load_items()
    results = {"machine": machine(), "threads": args.threads, "quick": args.quick, "n_items": len(items),
               "shots": SHOTS, "perplexity_args": PPL_ARGS, "models": [], "match": []}
    with tempfile.TemporaryDirectory(prefix="edgeeval-speed-") as tmp:
        for model in models:
            results["models"].append(measure_model(model, args, items, shots, Path(tmp)))
            results["match"].append({"model": Path(model).name, **match_rate(model, args, items)})
        if not args.skip_lmeval:
            lm_model = min(models, key=os.path.getsize)  # the quicker one: lm-eval takes minutes per item
            n = args.lmeval_items or (2 if args.quick else 3)
            print(f"[{Path(lm_model).name}] lm-eval gguf on {n} items", file=sys.stderr, flush=True)
            lm_dir = Path(tmp) / "lmeval"
            lm_dir.mkdir()
            lm = lmeval_gguf(lm_model, items[:n], args.threads, lm_dir)
            # edgeeval on the same items: a second or two, so the median of three runs.
            runs = [run_child({"model": lm_model, "threads": args.threads, "n_ctx": LOGLIK_CTX, "kind": "loglik",
                               "items": items[:n], "prefix": ""})["seconds"] / n for _ in range(3)]
            lm.update({"model": Path(lm_model).name, "edgeeval_per_item_s": sorted(runs)[1],
                       "edgeeval_per_item_s_runs": runs})
            lm["ratio"] = lm["per_item_s"] / lm["edgeeval_per_item_s"]
            results["lmeval"] = lm
        realistic = measure_realistic(args, results) or {}
    line = summary_line(results)
    results["summary"] = {**dict(field.split("=") for field in line.split()), **realistic}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(" ".join([line, *(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in realistic.items())]))
    return 0


def default_models() -> list[str]:
    """The bundled demo models, found the way `edgeeval demo` finds them."""
    from edgeeval.config.models import load_models_config, resolve_model_path

    project = load_models_config(ROOT / "models.toml")
    return [str(resolve_model_path(project, name)) for name in ("gemma3-270m", "smollm2-135m-instruct")]


def machine() -> dict:
    import llama_cpp

    from edgeeval.engine.machine import cpu_model, usable_cpus

    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
            "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__, "load_average": os.getloadavg(),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


if __name__ == "__main__":
    sys.exit(main())
