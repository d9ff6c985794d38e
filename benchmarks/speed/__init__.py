"""The speed benchmark (run it as `python benchmarks/speed/run.py`; README.md beside this file says what it
measures). run.py is the command line; the parts:

- inputs.py: the items, prompts and models measured on
- children.py: one measurement of edgeeval's engine per child process (`run.py --child SPEC`)
- peers.py: llama.cpp's own tools, built from the pinned llama-cpp-python's sources, and run
- lmeval.py: lm-eval's gguf backend against llama-cpp-python's server
- demo.py: the full run's per-model sections (loglik, one sequence, batched, RSS) and batched = one at a time
- realistic.py: the Qwen 1.5B section (speculative decoding, --parallel auto) and the demo models' equality check
- profiles.py: `--misses` and `--misses --divergence`
- report.py: the printed table and lines, and results.json
- jsonable.py, processes.py, common.py: typed results to JSON, processes under GNU time, shared settings
"""
