#!/usr/bin/env bash
# Makes sure llama.cpp's Python binding (PyPI llama-cpp-python 0.3.36, compiled from source,
# ~10 minutes on 2 cores) is installed in a venv under .cache, for the side-by-side checks and
# benchmarks (never for make test). Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv-llama-cpp
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    echo "llama-cpp-venv: building llama-cpp-python 0.3.36 into $venv (~10 minutes)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet llama-cpp-python==0.3.36 numpy >&2
fi
echo "$PWD/$venv/bin/python"
