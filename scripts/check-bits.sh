#!/usr/bin/env bash
# Whether honest workers on different CPUs compute the same bits: the release binary's
# `aimarket infer --model smollm2` greedy generations of three prompts (24 tokens each, with
# their ids and log-probabilities) and the scores of one candidate, on every kernel path this
# CPU runs at 1 and 2 threads, then on emulated CPUs: x86-64 without AVX (QEMU's Nehalem,
# SSE4.2 only) and, with --arm, AArch64 (NEON and portable, cross-built); the emulated runs on
# an x86-64 host only. Prints one line per run with the digest of its output and exits non-zero
# if any two differ.
# Installs QEMU (and, for --arm, the AArch64 cross tools) if missing: scripts/setup.sh --qemu,
# --cross-arm.
#   scripts/check-bits.sh [--arm]
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "check-bits: $*" >&2; }
arm=false
[ "${1:-}" = "--arm" ] && arm=true
cargo="${CARGO:-cargo}"
model="$(scripts/fetch-smollm2.sh)"
target_dir="$(scripts/target-dir.sh)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

scripts/setup.sh --qemu >/dev/null

"$cargo" build --quiet --release -p cli
native="$target_dir/release/aimarket"
runs=()
for kernel in amx avx512 avx2 neon portable; do
    # A path this CPU lacks is refused before any work: skipped.
    "$native" infer --model smollm2 --model-dir "$model" --kernel "$kernel" --type generate \
        --max-new-tokens 1 --json -- x >/dev/null 2>&1 || continue
    for threads in 1 2; do
        runs+=("native $kernel ${threads}t|$native|--kernel $kernel --threads $threads")
    done
done
if [ "$(uname -m)" = x86_64 ]; then
    runs+=("qemu nehalem auto 1t|qemu-x86_64 -cpu Nehalem $native|--threads 1")
fi
if $arm && [ "$(uname -m)" = x86_64 ]; then
    scripts/setup.sh --cross-arm
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        "$cargo" build --quiet --release -p cli --target aarch64-unknown-linux-gnu
    arm_bin="$target_dir/aarch64-unknown-linux-gnu/release/aimarket"
    for kernel in neon portable; do
        runs+=("qemu aarch64 $kernel 1t|qemu-aarch64 -L /usr/aarch64-linux-gnu $arm_bin|--kernel $kernel --threads 1")
    done
fi

prompts=(
    "Write a haiku about the sea."
    "Explain in two sentences why the sky is blue."
    "Read the following note and explain in a few sentences what the writer wants, then suggest a reply. The note: the team meeting moves from Monday to Tuesday at ten, in the small room on the second floor, because the large room is being painted; please bring the figures for the third quarter and the list of open questions from last week."
)
# The candidate scored: the first run's answer to the last prompt, one id changed halfway
# (so the scores also cover a token the model would not pick).
candidate=""
digests=()
for run in "${runs[@]}"; do
    IFS='|' read -r name bin flags <<<"$run"
    # shellcheck disable=SC2086 # $bin and $flags are word lists
    $bin infer --model smollm2 --model-dir "$model" $flags --type generate --max-new-tokens 24 \
        --json -- "${prompts[@]}" >"$out/gen" 2>/dev/null
    if [ -z "$candidate" ]; then
        candidate="$(python3 -c '
import json, sys
ids = json.load(open(sys.argv[1]))[-1]["token_ids"]
ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % 49152
print(",".join(map(str, ids)))' "$out/gen")"
    fi
    # shellcheck disable=SC2086
    $bin infer --model smollm2 --model-dir "$model" $flags --type generate \
        --score-ids "$candidate" --json -- "${prompts[2]}" >"$out/score" 2>/dev/null
    digest="$(cat "$out/gen" "$out/score" | sha256sum | cut -c1-16)"
    digests+=("$digest")
    printf '%-24s %s\n' "$name" "$digest"
done
if [ "$(printf '%s\n' "${digests[@]}" | sort -u | wc -l)" -ne 1 ]; then
    say "the runs differ"
    exit 1
fi
say "all ${#digests[@]} runs computed the same bits"
