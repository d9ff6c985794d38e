#!/usr/bin/env bash
# Prints the path of a llama-cpp-python wheel for this machine, compiling it once per (version,
# backend, CPU or build flags) and caching it under ~/.cache/edgeeval/wheels/.
# Usage: scripts/llama-wheel.sh PYTHON      (PYTHON's pip compiles it; the wheel is for any Python 3)
#   EDGEEVAL_CMAKE_ARGS    extra CMake flags, e.g. for a wheel that runs on other CPUs:
#                          "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
#   EDGEEVAL_BACKEND       cpu, cuda or metal (default: what this machine can use)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pins.sh
PYTHON="${1:?usage: scripts/llama-wheel.sh PYTHON}"
EXTRA="${EDGEEVAL_CMAKE_ARGS:-}"

log() { printf '[llama-wheel] %s\n' "$*" >&2; }

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

sha12() { (sha256sum 2>/dev/null || shasum -a 256) | cut -c1-12; }

# A native build uses the instructions of the CPU it was built on, so its wheel is keyed by the
# CPU's feature flags; a build with GGML_NATIVE=OFF runs wherever its named instruction sets do,
# so it is keyed by the flags alone.
build_key() {
  local key
  if [[ "$EXTRA" == *GGML_NATIVE=OFF* ]]; then
    key="portable"
  elif [ -r /proc/cpuinfo ]; then
    key="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | sha12)"
  else
    key="$( (sysctl -n machdep.cpu.brand_string 2>/dev/null || uname -m) | sha12)"
  fi
  [ -n "$EXTRA" ] && key="$key-$(printf '%s' "$EXTRA" | sha12)"
  echo "$key"
}

BACKEND="${EDGEEVAL_BACKEND:-$(backend)}"
CACHE="${EDGEEVAL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeeval/wheels}/llama-cpp-python-${LLAMA_CPP_VERSION}-${BACKEND}-$(build_key)"

if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  log "building llama-cpp-python $LLAMA_CPP_VERSION for $BACKEND (once; about 4 minutes on 2 cores)"
  rm -rf "$CACHE.tmp" && mkdir -p "$CACHE"
  cmake_args="-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  [ "$BACKEND" = cuda ] && cmake_args="$cmake_args -DGGML_CUDA=on"
  # --no-cache-dir: pip's own wheel cache is keyed by the source, not by CMAKE_ARGS, and would hand
  # back the last build whatever the flags or backend (a native CPU wheel for a portable or CUDA one).
  CMAKE_ARGS="$cmake_args $EXTRA" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" \
    "$PYTHON" -m pip --disable-pip-version-check -q --no-cache-dir wheel --no-deps --no-binary llama-cpp-python \
      -w "$CACHE.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
  mv "$CACHE.tmp"/llama_cpp_python-*.whl "$CACHE"/ && rm -rf "$CACHE.tmp"
else
  log "using the cached llama-cpp-python wheel in $CACHE ($BACKEND)"
fi
ls "$CACHE"/llama_cpp_python-*.whl | head -n1
