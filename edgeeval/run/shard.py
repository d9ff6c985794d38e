"""Shards: one run split over processes that share nothing but the run directory (a Slurm job array).

Shard K of N (`--shard K/N`, K from 0) takes the examples whose hash of (task, example id) is K modulo
N, so adding examples to a task never moves the others to another shard. It appends to its own record
files (records/<model>/<task>.shard-K-of-N.jsonl) and says how far it got in shards/shard-K-of-N.json;
`edgeeval report` merges every file and names the shards that are missing or unfinished.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from edgeeval.errors import ConfigError
from edgeeval.files import write_private_text
from edgeeval.run.store import load_manifest, load_records, now_iso

STATUS_DIR = "shards"
_SPEC = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    index: int
    """K, from 0 (Slurm: $SLURM_ARRAY_TASK_ID with --array=0-(N-1))."""
    count: int
    """N, how many shards the run is split into."""

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = _SPEC.fullmatch(text.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise ConfigError(f"--shard expects K/N with 0 <= K < N (e.g. 0/3, 1/3, 2/3), got '{text}'")
        return cls(int(match[1]), int(match[2]))

    @property
    def part(self) -> str:
        """The name of this shard's record files and status file."""
        return f"shard-{self.index}-of-{self.count}"

    def owns(self, task: str, example_id: str) -> bool:
        digest = hashlib.sha256(f"{task}\0{example_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def write_status(run_dir: Path, shard: Shard, status: str, planned: dict[str, dict[str, int]],
                 summary: dict | None = None) -> None:
    """shards/<part>.json: which shard, on which machine, 'running' or 'finished', and its units per
    model and task (done or not), so the report can tell a finished shard from one that stopped."""
    (run_dir / STATUS_DIR).mkdir(mode=0o700, exist_ok=True)
    body = {"shard": str(shard), "index": shard.index, "count": shard.count, "status": status,
            "node": socket.gethostname(), "updated": now_iso(), "planned": planned, **(summary or {})}
    write_private_text(run_dir / STATUS_DIR / f"{shard.part}.json", json.dumps(body, indent=2, sort_keys=True) + "\n")


def shard_gaps(run_dir: Path) -> list[str]:
    """One line per shard that is missing (no status file) or unfinished, for each shard count the run
    directory was split by; nothing when every model has a current record for every example."""
    statuses = _statuses(run_dir)
    if not statuses or _complete(run_dir):
        return []
    notes = []
    for count in sorted({s["count"] for s in statuses}):
        seen = {s["index"]: s for s in statuses if s["count"] == count}
        missing = [f"{k}/{count}" for k in range(count) if k not in seen]
        unfinished = [f"{k}/{count} ({seen[k].get('node', '?')}, last seen {seen[k].get('updated', '?')})"
                      for k in sorted(seen) if seen[k].get("status") != "finished"]
        if missing:
            notes.append(f"shard(s) {', '.join(missing)} missing: they never started in this run directory; "
                         "run them (same command with --shard K/N) and report again")
        if unfinished:
            notes.append(f"shard(s) {', '.join(unfinished)} unfinished: still running or stopped; re-run them "
                         "to resume, then report again")
    return notes


def _statuses(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted((run_dir / STATUS_DIR).glob("shard-*-of-*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            out.append({**body, "index": int(body["index"]), "count": int(body["count"])})
        except (OSError, ValueError, KeyError, TypeError):
            match = re.fullmatch(r"shard-(\d+)-of-(\d+)\.json", path.name)
            if match:  # a torn status file still tells that the shard started
                out.append({"index": int(match[1]), "count": int(match[2]), "status": "unreadable"})
    return out


def _complete(run_dir: Path) -> bool:
    manifest = load_manifest(run_dir)
    if manifest is None:
        return False
    for model, meta in manifest.models.items():
        for task, entry in manifest.tasks.items():
            ids = {r.unit_id for r in load_records(run_dir, model, task)
                   if r.model_sha256 == meta.sha256 and r.task_hash == entry.hash}
            expected = entry.units if entry.units is not None else (entry.examples or 0) * (entry.repeats or 1)
            if entry.examples is not None and len(ids) < expected:
                return False
    return True
