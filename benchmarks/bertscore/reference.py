"""The reference side of compare.py: the `bert-score` package's P/R/F1 on the pairs, from a local Hugging Face
model folder, offline. Run it in its own environment (torch, transformers, bert-score); edgeeval does not
depend on them. See README.md.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python reference.py --model /path/to/all-MiniLM-L6-v2 \\
        --layers 6 --out reference_scores.json [--pairs pairs.jsonl]"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local model folder (bert-score's model_type)")
    parser.add_argument("--layers", type=int, required=True, help="bert-score's num_layers (the model's last: all)")
    parser.add_argument("--pairs", type=Path, default=HERE / "pairs.jsonl")
    parser.add_argument("--idf", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import bert_score  # the reference environment's packages, not edgeeval's
    import torch
    import transformers

    pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    (precision, recall, f1), hash_code = bert_score.score(
        [p["candidate"] for p in pairs], [p["reference"] for p in pairs], model_type=args.model,
        num_layers=args.layers, idf=args.idf, rescale_with_baseline=False, batch_size=16, device="cpu",
        return_hash=True)
    out = {"model": args.model, "num_layers": args.layers, "idf": args.idf, "rescale_with_baseline": False,
           "bert_score_version": importlib.metadata.version("bert-score"),
           "transformers_version": transformers.__version__, "torch_version": torch.__version__, "hash": hash_code,
           "pairs": [{"id": p["id"], "P": float(a), "R": float(b), "F1": float(c)}
                     for p, a, b, c in zip(pairs, precision.tolist(), recall.tolist(), f1.tolist())]}
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"{len(pairs)} pairs, {hash_code} -> {args.out}")


if __name__ == "__main__":
    main()
