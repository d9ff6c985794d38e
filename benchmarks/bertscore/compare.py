"""edgeeval's BERTScore against the `bert-score` package, pair by pair, on the same encoder.

edgeeval runs the encoder as a GGUF through llama.cpp (its last layer) in a worker process, as `edgeeval run`
does, and scores the pairs with the function the run uses (`edgeeval.run.bertscore.score_pairs`). The reference
scores come from `reference.py`, run with bert-score in a separate environment (edgeeval does not depend on it).

    python benchmarks/bertscore/compare.py --encoder all-minilm-l6-v2-f32.gguf \\
        --reference reference_scores.json [--pairs benchmarks/bertscore/pairs.jsonl] [--out results.json]

Prints one line per pair and a last line `max_abs_delta_f1=... pairs_within_goal=k/n`; exits 1 when a pair
misses the goal (|delta F1| <= 0.01)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from edgeeval.engine import EngineSettings
from edgeeval.engine.worker import WorkerEngine
from edgeeval.run.bertscore import encoder_settings, score_pairs

HERE = Path(__file__).resolve().parent
GOAL = 0.01


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True, help="the encoder GGUF (converted with llama.cpp)")
    parser.add_argument("--reference", type=Path, required=True, help="reference.py's JSON")
    parser.add_argument("--pairs", type=Path, default=HERE / "pairs.jsonl")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the per-pair figures here as JSON")
    args = parser.parse_args()

    pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    reference = json.loads(args.reference.read_text(encoding="utf-8"))
    expected = {row["id"]: row for row in reference["pairs"]}
    missing = [p["id"] for p in pairs if p["id"] not in expected]
    if missing:
        sys.exit(f"{args.reference}: no reference score for {', '.join(missing)}")

    settings = encoder_settings(EngineSettings(n_threads=args.threads).resolved())
    started = time.perf_counter()
    engine = WorkerEngine(args.encoder, settings)
    try:
        scores = score_pairs(engine, [(p["candidate"], p["reference"]) for p in pairs], progress=True)
    finally:
        engine.close()
    seconds = time.perf_counter() - started

    rows = []
    for pair, (precision, recall, f1) in zip(pairs, scores):
        ref = expected[pair["id"]]
        row = {"id": pair["id"], "edgeeval": {"P": precision, "R": recall, "F1": f1},
               "bert_score": {"P": ref["P"], "R": ref["R"], "F1": ref["F1"]},
               "delta": {k: v - ref[k] for k, v in (("P", precision), ("R", recall), ("F1", f1))}}
        rows.append(row)
        print(f"{pair['id']}  F1 {f1:.6f} vs {ref['F1']:.6f}  dF1 {row['delta']['F1']:+.2e}  "
              f"dP {row['delta']['P']:+.2e}  dR {row['delta']['R']:+.2e}")
    worst = {k: max(abs(r["delta"][k]) for r in rows) for k in ("P", "R", "F1")}
    within = sum(abs(r["delta"]["F1"]) <= GOAL for r in rows)
    summary = {"encoder": str(args.encoder), "encoder_sha256": _sha256(args.encoder),
               "reference": {k: reference.get(k) for k in ("model", "num_layers", "idf", "bert_score_version",
                                                             "transformers_version", "hash")},
               "pairs": str(args.pairs), "n_pairs": len(rows), "goal_abs_delta_f1": GOAL,
               "max_abs_delta": worst, "pairs_within_goal": within, "seconds": round(seconds, 2), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"max_abs_delta_f1={worst['F1']:.2e} max_abs_delta_p={worst['P']:.2e} max_abs_delta_r={worst['R']:.2e} "
          f"pairs_within_goal={within}/{len(rows)} seconds={seconds:.1f}")
    return 0 if within == len(rows) else 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
