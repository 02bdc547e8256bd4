#!/usr/bin/env bash
# End-to-end worker throughput with batching off and on: its own nats-server and coordinator,
# N review sentences queued as sentiment tasks (one answer each), then one `--model minilm`
# worker at each --batch size; prints texts/s from its start to the last task finalized.
#   scripts/bench-workers.sh [N] [BATCH...]    (make bench runs it; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."

n="${1:-480}"
shift || true
batches=("${@:-1 32}")
read -r -a batches <<<"${batches[*]}"
bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/release/aimarket}"
minilm="$(scripts/fetch-minilm.sh)"
nats="$(scripts/setup.sh)"
dir="$(mktemp -d)"
sentences="$dir/sentences.txt"
awk -F'\t' -v n="$n" 'NR <= n { print $3 }' "$(scripts/fetch-sentences.sh)/amazonReviewSnippets_GroundTruth.txt" >"$sentences"

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
# shellcheck source=scripts/bench-cluster.sh
. scripts/bench-cluster.sh
bench_cluster 14222 benchw

finalized() { "$bin" --json stats | grep -o '"finalized": *[0-9]*' | grep -o '[0-9]*$'; }

echo "| worker | batch | texts | seconds | texts/s |"
echo "|---|---|---|---|---|"
for b in "${batches[@]}"; do
    "$bin" ops reset --yes >/dev/null
    "$bin" task add --file "$sentences" --required 1 >/dev/null
    start=$(date +%s.%N)
    "$bin" worker --id "mini-b$b" --model minilm --model-dir "$minilm" --batch "$b" >"$dir/w$b.log" 2>&1 &
    wpid=$!
    until [ "$(finalized)" = "$n" ]; do sleep 0.2; done
    end=$(date +%s.%N)
    kill -TERM "$wpid"; wait "$wpid" 2>/dev/null || true
    awk -v b="$b" -v n="$n" -v s="$start" -v e="$end" \
        'BEGIN { printf "| minilm | %d | %d | %.1f | %.1f |\n", b, n, e - s, n / (e - s) }'
done
