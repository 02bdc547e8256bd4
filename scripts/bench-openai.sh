#!/usr/bin/env bash
# The OpenAI-compatible API under load: its own nats-server and coordinator (HTTP on a free
# port), three `--model smollm2` workers (one thread each) and one minilm worker. Prints three
# markdown tables (BENCHMARKS.md):
#   1. N short chat completions (MAX_TOKENS) at concurrency C through /v1/chat/completions,
#      against the same chats through `aimarket task add --messages --wait`;
#   2. the API's own overhead: sequential /v1/embeddings requests (one minilm worker, one answer
#      each), the request's latency against its task's (created to finished);
#   3. time to first token of streamed completions, verified against optimistic.
#   scripts/bench-openai.sh [N] [C] [MAX_TOKENS]    (needs a release build, or AIMARKET_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."

n="${1:-24}"
conc="${2:-4}"
max_tokens="${3:-16}"
bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/release/aimarket}"
smollm2="$(scripts/fetch-smollm2.sh)"
minilm="$(scripts/fetch-minilm.sh)"
nats="$(scripts/setup.sh)"
dir="$(mktemp -d)"

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
port=15322
while (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do port=$((port + 1)); done
http=18322
while (exec 3<>/dev/tcp/127.0.0.1/"$http") 2>/dev/null; do http=$((http + 1)); done
export NATS_URL="nats://127.0.0.1:$port" AIMARKET_PREFIX=benchoai
"$nats" -p "$port" >"$dir/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
"$bin" coordinator --db "$dir/c.db" --http "127.0.0.1:$http" >"$dir/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do "$bin" stats >/dev/null 2>&1 && break; sleep 0.05; done
base="http://127.0.0.1:$http"

for w in s1 s2 s3; do
    "$bin" worker --id "$w" --model smollm2 --model-dir "$smollm2" --threads 1 >"$dir/$w.log" 2>&1 &
    pids+=($!)
done
"$bin" worker --id m1 --model minilm --model-dir "$minilm" >"$dir/m1.log" 2>&1 &
pids+=($!)
until [ "$("$bin" --json stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["workers_active"])')" = 4 ]; do
    sleep 0.2
done
# One request first: every worker has run its model once.
python3 scripts/bench_openai.py chat "$base" 2 1 4 >/dev/null

echo "| path | requests | concurrency | requests/s | p50 ms | p90 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|---|"
python3 scripts/bench_openai.py chat "$base" "$n" "$conc" "$max_tokens"
python3 scripts/bench_openai.py cli "$bin" "$n" "$conc" "$max_tokens" "$dir"
echo
echo "| requests | n | API p50 ms | API p90 ms | task p50 ms | overhead p50 ms | overhead p90 ms |"
echo "|---|---|---|---|---|---|---|"
python3 scripts/bench_openai.py embed "$base" 200
echo
echo "| stream mode | requests | max_tokens | TTFT p50 ms | TTFT p90 ms | total p50 ms |"
echo "|---|---|---|---|---|---|"
python3 scripts/bench_openai.py ttft "$base" 8 48 verified
python3 scripts/bench_openai.py ttft "$base" 8 48 optimistic
