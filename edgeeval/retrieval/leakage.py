"""The leakage guard: a test item whose own question text is in the corpus (a near-duplicate by shared
word shingles) would let retrieval hand the model the item itself."""

from __future__ import annotations

import re

SHINGLE_WORDS = 5
"""Shingles are runs of this many words (lower-cased, punctuation ignored)."""
MIN_SHARED = 3
"""At least this many shingles must be shared, so that one stock phrase is never a duplicate."""
CANDIDATES = 20
"""How many of the best-scored passages (besides the k shown) are checked for each item."""

_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < size:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i:i + size]) for i in range(len(words) - size + 1))


def containment(query: frozenset, passage: frozenset) -> float:
    """The share of the query's shingles found in the passage: 1.0 when the passage holds the whole query.
    (Not Jaccard: a long passage that quotes the question whole is exactly the leak to find.)"""
    if not query or not passage:
        return 0.0
    shared = len(query & passage)
    if shared < min(MIN_SHARED, len(query)):
        return 0.0
    return shared / len(query)


def is_near_duplicate(query: str, passage: str, threshold: float) -> bool:
    return containment(shingles(query), shingles(passage)) >= threshold
