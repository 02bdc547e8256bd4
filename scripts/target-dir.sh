#!/usr/bin/env bash
# Prints cargo's target directory for this workspace, wherever it is (CARGO_TARGET_DIR,
# build.target-dir in a cargo config, or ./target), so scripts find the binaries cargo built.
set -euo pipefail
cd "$(dirname "$0")/.."
"${CARGO:-cargo}" metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
