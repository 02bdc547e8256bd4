#!/usr/bin/env bash
# Verified generations end to end: its own nats-server and coordinator, three `--model smollm2`
# workers (one thread each), N summarization tasks of review sentences (three votes each,
# max_new_tokens T), verified in MODE: `exact` (three generations, exact match) or
# `generate-once` (one generation, scored by the two other workers); prints verified
# generations per minute from the first task added to the last one final, what became of the
# tasks, and each worker's peak RSS.
#   scripts/bench-verified.sh [N] [T] [MODE]    (make bench runs both modes; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."

n="${1:-12}"
t="${2:-48}"
mode="${3:-exact}"
bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/release/aimarket}"
smollm2="$(scripts/fetch-smollm2.sh)"
nats="$(scripts/setup.sh)"
dir="$(mktemp -d)"
texts="$dir/texts.txt"
# Four consecutive movie-review sentences per task.
awk -F'\t' -v n="$n" '{ s = s (s ? " " : "") $3 } NR % 4 == 0 { print s; s = ""; if (++k == n) exit }' \
    "$(scripts/fetch-sentences.sh)/movieReviewSnippets_GroundTruth.txt" >"$texts"

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
# shellcheck source=scripts/bench-cluster.sh
. scripts/bench-cluster.sh
bench_cluster 15222 benchv

workers=()
for w in v1 v2 v3; do
    "$bin" worker --id "$w" --model smollm2 --model-dir "$smollm2" --threads 1 >"$dir/$w.log" 2>&1 &
    pids+=($!)
    workers+=($!)
done
until [ "$("$bin" --json stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["workers_active"])')" = 3 ]; do
    sleep 0.2
done

start=$(date +%s.%N)
"$bin" task add --file "$texts" --type summarization --max-new-tokens "$t" --verify "$mode" >/dev/null
done_count() {
    "$bin" --json stats | python3 -c 'import json, sys; s = json.load(sys.stdin)["tasks_by_status"]; print(s.get("finalized", 0) + s.get("failed", 0))'
}
until [ "$(done_count)" = "$n" ]; do sleep 0.5; done
end=$(date +%s.%N)

rss() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
finalized=$("$bin" --json stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["tasks_by_status"].get("finalized", 0))')
with_text=$("$bin" --json task list --status finalized | python3 -c 'import json, sys; print(sum(len(t["final_text"]) > 0 for t in json.load(sys.stdin)))')
echo "| workers | mode | tasks | max_new_tokens | finalized | seconds | verified generations/min | peak RSS per worker (MB) |"
echo "|---|---|---|---|---|---|---|---|"
awk -v n="$n" -v t="$t" -v m="$mode" -v f="$finalized" -v s="$start" -v e="$end" -v r="$(rss "${workers[0]}") / $(rss "${workers[1]}") / $(rss "${workers[2]}")" \
    'BEGIN { printf "| 3 x smollm2 (1 thread each) | %s | %d | %d | %d | %.1f | %.1f | %s |\n", m, n, t, f, e - s, n * 60 / (e - s), r }'
[ "$with_text" = "$finalized" ]
