"""Retrieval augmentation: a model entry that reads passages from a local corpus in every prompt.

arm.py makes a model entry's retrieval ready; corpus.py reads a corpus into passages, index.py builds its BM25
index and embedding.py its embedding index (a GGUF model in a worker process), both kept in cache.py's
owner-only cache; leakage.py finds test items that are in the corpus, augment.py puts passages into prompts
and describes them for the records, audit.py reads that back for the report. Retrieval runs while prompts
are planned, so the passages are part of each prompt and of its hash."""
