#!/usr/bin/env bash
# Makes sure the official OpenAI Python client (PyPI `openai`) is installed in a venv under
# .cache, for the end-to-end test of the OpenAI-compatible API (cli/tests/openai_api.rs) and
# for trying the API by hand (README). Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv-openai
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    echo "openai-venv: installing the openai package from PyPI into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet 'openai>=1.40,<3' >&2
fi
echo "$PWD/$venv/bin/python"
