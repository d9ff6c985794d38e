# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent;
# llama-cpp-python is compiled once and cached as a wheel).
PY := .venv/bin/python

.PHONY: setup setup-dev demo test
setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

demo: setup
	.venv/bin/edgeeval demo

test: setup-dev
	$(PY) -m pytest
