"""llama.cpp's own tools as their users run them: built once from the llama.cpp inside the llama-cpp-python sdist
that pyproject.toml pins (the same llama.cpp edgeeval runs), then run and read."""

from __future__ import annotations

import functools
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import PEERS_DIR, PPL_ARGS, ROOT
from .inputs import Item, runner_prompts, task_spec
from .processes import run_timed

PEER_TOOLS = ["llama-perplexity", "llama-bench", "llama-batched-bench", "llama-speculative"]


@dataclass(kw_only=True)
class PerplexityRun:
    """llama-perplexity --multiple-choice: the scoring's seconds (from its own log), per item 1 if correct."""

    seconds: float
    wall_seconds: float
    peak_rss_mb: float
    correct: list[int]
    accuracy: float
    n_items: int

    @property
    def items_per_s(self) -> float:
        return self.n_items / self.seconds


@dataclass(kw_only=True)
class BenchRun:
    """llama-bench pp512 / tg128 (tokens/s)."""

    pp512: float
    tg128: float
    flash_attn: int | None
    n_batch: int | None
    n_ubatch: int | None


@dataclass(kw_only=True)
class BatchedBenchRow:
    """llama-batched-bench at one number of sequences: prompt and generated tokens/s together, and generated only."""

    seconds: float
    speed: float
    speed_tg: float


@dataclass(kw_only=True)
class SpeculativePeer:
    """llama-speculative over every prompt: its "decoded" tokens/s and acceptance."""

    tokens_per_s: float
    acceptance: float | None
    decoded: float
    seconds: float


@functools.cache
def edgeeval_repacks() -> bool:
    """Whether edgeeval's engine repacks weights on this CPU (EngineSettings' per-CPU default: off on Intel AMX).
    The Qwen section's peers run the same way, so that both sides use the same matrix kernels: on one AMD EPYC
    repacking cost Qwen 1.5B Q4_K_M 31% of llama-bench's pp512 and gained 24% in tg."""
    from edgeeval.engine import EngineSettings

    return bool(EngineSettings(n_threads=1).resolved().use_extra_bufts)


def peer_bin(name: str) -> Path:
    return PEERS_DIR / "llama.cpp" / "build" / "bin" / name


def llama_cpp_python_pin() -> str:
    """The llama-cpp-python version pyproject.toml's [project] dependencies pin (`llama-cpp-python==X`)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        pinned = re.fullmatch(r"llama-cpp-python\s*==\s*([^\s;,]+)", requirement.strip())
        if pinned:
            return pinned.group(1)
    raise RuntimeError("pyproject.toml pins no llama-cpp-python version (llama-cpp-python==X)")


def ensure_peers() -> None:
    """Build llama-perplexity, llama-bench, llama-batched-bench and llama-speculative from the llama.cpp inside the
    llama-cpp-python sdist (the same llama.cpp edgeeval runs), once, into PEERS_DIR."""
    if all(peer_bin(t).exists() for t in PEER_TOOLS):
        return
    src = PEERS_DIR / "llama.cpp"
    if not (src / "CMakeLists.txt").exists():
        shutil.copytree(llama_cpp_sources(llama_cpp_python_pin()), src)
    print(f"building {', '.join(PEER_TOOLS)} in {src} (once; a few minutes)", file=sys.stderr)
    subprocess.run(["cmake", "-B", "build", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"], cwd=src, check=True,
                   stdout=subprocess.DEVNULL)
    from edgeeval.engine.machine import usable_cpus

    subprocess.run(["cmake", "--build", "build", "--target", *PEER_TOOLS, f"-j{usable_cpus()}"], cwd=src,
                   check=True, stdout=subprocess.DEVNULL)


def llama_cpp_sources(version: str) -> Path:
    """The llama.cpp inside llama-cpp-python's sdist: an unpacked one in /tmp/src, else downloaded with pip."""
    local = Path(f"/tmp/src/llama_cpp_python-{version}/vendor/llama.cpp")
    if local.exists():
        return local
    sdist = PEERS_DIR / "sdist"
    sdist.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                    f"llama-cpp-python=={version}", "-d", str(sdist)], check=True)
    archive = next(sdist.glob("llama_cpp_python-*.tar.gz"))
    shutil.unpack_archive(str(archive), str(sdist))
    return sdist / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"


# --- llama-perplexity ----------------------------------------------------------------------------

def write_mc_tasks(path: Path, items: list[Item], prefix: str) -> None:
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


def perplexity_mc(model: str, items: list[Item], prefix: str, threads: int, tmp: Path,
                  extra: tuple[str, ...] = ()) -> PerplexityRun:
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
    return PerplexityRun(seconds=seconds, wall_seconds=wall, peak_rss_mb=rss, correct=per_item,
                         accuracy=100.0 * sum(per_item) / max(1, len(per_item)), n_items=len(per_item))


def _log_time(out: str, key: str) -> float:
    """Seconds since start of the first log line containing `key` ('M.SS.mmm.uuu I ...')."""
    for line in out.splitlines():
        if key in line:
            minutes, secs, millis, micros = line.split()[0].split(".")
            return int(minutes) * 60 + int(secs) + int(millis) / 1e3 + int(micros) / 1e6
    raise RuntimeError(f"llama-perplexity printed no line with {key!r}")


# --- llama-bench and llama-batched-bench ---------------------------------------------------------

def _bench_rows(cmd: list[str]) -> list[dict]:
    """llama-bench's JSON rows (`-o json`)."""
    out, _, _ = run_timed(cmd)
    return json.loads(out[out.index("[") : out.rindex("]") + 1])


def llama_bench(model: str, threads: int, repeats: int, extra: tuple[str, ...] = ()) -> BenchRun:
    rows = _bench_rows([str(peer_bin("llama-bench")), "-m", model, "-t", str(threads), "-p", "512", "-n", "128",
                        "-r", str(repeats), "-o", "json", *extra])
    pp = next(r for r in rows if r["n_prompt"] == 512 and r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_gen"] == 128 and r["n_prompt"] == 0)
    return BenchRun(pp512=pp["avg_ts"], tg128=tg["avg_ts"], flash_attn=pp.get("flash_attn"),
                    n_batch=pp.get("n_batch"), n_ubatch=pp.get("n_ubatch"))


def prompt_bench(model: str, threads: int, lengths: list[int], repeats: int = 3) -> dict[str, float]:
    """llama-bench prompt processing (tok/s) at each length, flash attention on (its default) and off:
    `pp{length}_fa_{on|off}`."""
    rows = _bench_rows([str(peer_bin("llama-bench")), "-m", model, "-t", str(threads), "-n", "0",
                        "-p", ",".join(map(str, lengths)), "-fa", "1,0", "-r", str(repeats), "-o", "json"])
    return {f"pp{r['n_prompt']}_fa_{'on' if r['flash_attn'] else 'off'}": r["avg_ts"] for r in rows}


def batched_bench(model: str, threads: int, pp: int, tg: int, sizes: tuple[int, ...],
                  extra: tuple[str, ...] = ()) -> dict[str, BatchedBenchRow]:
    """llama-batched-bench with prompts of `pp` tokens (not shared) and `tg` generated, per number of sequences."""
    n_ctx = max(sizes) * (pp + tg)
    out, _, _ = run_timed([str(peer_bin("llama-batched-bench")), "-m", model, "-t", str(threads), "-c", str(n_ctx),
                           "-b", "2048", "-ub", "512", "-npp", str(pp), "-ntg", str(tg),
                           "-npl", ",".join(map(str, sizes)), "--output-format", "jsonl", *extra])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {str(r["pl"]): BatchedBenchRow(seconds=r["t"], speed=r["speed"], speed_tg=r["speed_tg"]) for r in rows}


# --- llama-speculative ---------------------------------------------------------------------------

def llama_speculative(target: str, draft: str, args, tasks: tuple[str, ...], limit: int) -> SpeculativePeer:
    """llama.cpp's own llama-speculative on the same pair, prompts, draft length, draft cut-off and threads."""
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
    return SpeculativePeer(tokens_per_s=decoded / seconds, acceptance=accepted / drafted if drafted else None,
                           decoded=decoded, seconds=seconds)
