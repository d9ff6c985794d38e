"""BERTScore (Zhang et al., ICLR 2020) from an encoder's per-token vectors, as the `bert-score` package computes it:
each candidate token matched to its most similar reference token by cosine (precision), each reference token to
its most similar candidate token (recall), averaged with weights: none for the start and end tokens the encoder
adds ([CLS], [SEP]), 1 for the others, or with idf each token's inverse document frequency over the references;
F1 is their harmonic mean. The start and end tokens still count as matches for the other side's tokens, as in
bert-score."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Embedded = Mapping[str, Any]
"""One text as the engine's token_embeddings gives it: tokens, special (per token), vectors (per token)."""


def idf_weights(references: Sequence[Embedded]) -> dict[int, float]:
    """bert-score's idf over the references: log((M + 1) / (df + 1)) for a token in df of the M references."""
    documents = Counter(token for text in references for token in set(text["tokens"]))
    return {token: math.log((len(references) + 1) / (count + 1)) for token, count in documents.items()}


def bertscore(candidate: Embedded, reference: Embedded, idf: Mapping[int, float] | None = None,
              n_references: int = 0) -> tuple[float, float, float]:
    """(precision, recall, F1) of a candidate against its reference. A text with no weighted token (an empty
    reply) scores 0."""
    cand, ref = _unit_rows(candidate["vectors"]), _unit_rows(reference["vectors"])
    if not len(cand) or not len(ref):
        return 0.0, 0.0, 0.0
    similarity = cand @ ref.T
    weights_c, weights_r = _weights(candidate, idf, n_references), _weights(reference, idf, n_references)
    if weights_c.sum() <= 0 or weights_r.sum() <= 0:
        return 0.0, 0.0, 0.0
    precision = float((similarity.max(axis=1) * weights_c).sum() / weights_c.sum())
    recall = float((similarity.max(axis=0) * weights_r).sum() / weights_r.sum())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _unit_rows(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2:
        return np.zeros((0, 0))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _weights(text: Embedded, idf: Mapping[int, float] | None, n_references: int) -> np.ndarray:
    unseen = math.log(n_references + 1)  # a token no reference holds: bert-score's default idf
    return np.array([0.0 if special else (1.0 if idf is None else idf.get(token, unseen))
                     for token, special in zip(text["tokens"], text["special"])])
