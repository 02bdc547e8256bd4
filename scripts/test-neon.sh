#!/usr/bin/env bash
# The engine's NEON path, checked from an x86-64 machine (or natively on an AArch64 one): the
# worker's kernel unit tests (every path against candle's vec_dot_unopt, bit for bit) and the
# engine test over the real SmolLM2 file (portable and NEON at 1-3 threads, prompt rows against
# decode steps, all identical), cross-built for AArch64 and run under QEMU user emulation, then
# clippy over the AArch64 build. Installs what is missing (`scripts/setup.sh --cross-arm`):
# Debian's gcc-aarch64-linux-gnu and qemu-user, and rustup's AArch64 standard library. Not part
# of `make test` (it needs rustup's download; about 4 minutes once built, the first cross build
# ~10); run it after touching a kernel.
#   scripts/test-neon.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=()
if [ "$(uname -m)" != aarch64 ]; then
    scripts/setup.sh --cross-arm
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
    target=(--target aarch64-unknown-linux-gnu)
fi
cargo="${CARGO:-cargo}"
"$cargo" test --release -p worker "${target[@]}" --lib -- model::
AIMARKET_SMOLLM2_DIR="$(scripts/fetch-smollm2.sh)" \
    "$cargo" test --release -p worker "${target[@]}" --test engine -- --test-threads 1
"$cargo" clippy -p worker "${target[@]}" --all-targets -- -D warnings
