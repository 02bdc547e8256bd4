#!/usr/bin/env bash
# Accuracy as the coordinator measures it, on the human-rated sentences of the VADER study
# (scripts/fetch-sentences.sh): for each set (product reviews, movie reviews), N sentences spread
# evenly over the file are added both as gold items and as tasks needing 3 answers from distinct
# model contents (--distinct-models), and one worker of each model answers them: lexicon,
# MiniLM and SmolLM2 (its sentiment prompt). Reports each model's gold accuracy from
# `aimarket leaderboard --by-model` and the accuracy of what the coordinator finalized.
#
# Usage: scripts/accuracy.sh [N]   (default 200; SmolLM2 answers about 2 sentences a second)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
bin=${AIMARKET_BIN:-$(scripts/target-dir.sh)/release/aimarket}
sentences=$(scripts/fetch-sentences.sh)
minilm=$(scripts/fetch-minilm.sh)
smollm2=$(scripts/fetch-smollm2.sh)
nats_bin=$(scripts/setup.sh)
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$nats_bin" -a 127.0.0.1 -p "$port" >"$tmp/nats.log" 2>&1 &
pids+=($!)
export NATS_URL="nats://127.0.0.1:$port"
for _ in $(seq 50); do
    (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
done

printf '| set | model | content | gold answers | gold accuracy |\n|---|---|---|---|---|\n' >"$tmp/models.md"
printf '| set | sentences | finalized | lexicon | MiniLM | SmolLM2 | consensus (3 distinct models) |\n|---|---|---|---|---|---|---|\n' >"$tmp/consensus.md"
for set in amazonReviewSnippets movieReviewSnippets; do
    name=${set%ReviewSnippets}
    python3 - "$sentences/${set}_GroundTruth.txt" "$n" "$tmp/$name" <<'PY'
import sys
src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [l.rstrip("\n").split("\t", 2) for l in open(src, encoding="utf-8")]
rows = [r for r in rows if len(r) == 3 and float(r[1]) != 0.0]
step = len(rows) / n
picked = [rows[int(i * step)] for i in range(min(n, len(rows)))]
with open(out + ".tsv", "w") as f:
    f.writelines("\t".join(r) + "\n" for r in picked)
with open(out + ".txt", "w") as f:
    f.writelines(r[2] + "\n" for r in picked)
PY
    prefix="acc$name"
    "$bin" --prefix "$prefix" coordinator --db "$tmp/$name.db" --http off --gold-rate 0.5 \
        --gold-min-answers 1000000 --distinct-models >"$tmp/coordinator-$name.log" 2>&1 &
    pids+=($!)
    until "$bin" --prefix "$prefix" stats >/dev/null 2>&1; do sleep 0.2; done
    "$bin" --prefix "$prefix" gold add --file "$tmp/$name.tsv" >&2
    "$bin" --prefix "$prefix" --json task add --file "$tmp/$name.txt" --required 3 >"$tmp/$name.ids"
    "$bin" --prefix "$prefix" worker --id "lexicon-$name" --model lexicon --batch 8 >"$tmp/w1.log" 2>&1 &
    pids+=($!)
    "$bin" --prefix "$prefix" worker --id "minilm-$name" --model minilm --model-dir "$minilm" --batch 8 >"$tmp/w2.log" 2>&1 &
    pids+=($!)
    "$bin" --prefix "$prefix" worker --id "smollm2-$name" --model smollm2 --model-dir "$smollm2" --batch 8 >"$tmp/w3.log" 2>&1 &
    pids+=($!)
    python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["task_ids"]))' "$tmp/$name.ids" \
        | xargs "$bin" --prefix "$prefix" --json task wait --timeout 3600 >"$tmp/$name.tasks.json"
    for id in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["task_ids"]))' "$tmp/$name.ids"); do
        "$bin" --prefix "$prefix" --json task get "$id"
    done >"$tmp/$name.details.json"
    "$bin" --prefix "$prefix" --json leaderboard --by-model >"$tmp/$name.models.json"
    python3 - "$name" "$tmp/$name.tsv" "$tmp/$name.details.json" "$tmp/$name.models.json" \
        "$tmp/models.md" "$tmp/consensus.md" <<'PY'
import json, sys
name, tsv, details, models, models_md, consensus_md = sys.argv[1:]
truth = [float(l.split("\t", 2)[1]) > 0 for l in open(tsv, encoding="utf-8")]
text, tasks, at, dec = open(details).read(), [], 0, json.JSONDecoder()
while text[at:].strip():
    at += len(text[at:]) - len(text[at:].lstrip())
    task, at = dec.raw_decode(text, at)
    tasks.append(task)
right = {"consensus": 0}
done = 0
for t, positive in zip(tasks, truth):
    if t["task"]["status"] != "finalized":
        continue
    done += 1
    right["consensus"] += (t["task"]["final_label"] == "positive") == positive
    for s in t["submissions"]:
        m = s["model"].split("/")[0]
        right[m] = right.get(m, 0) + ((s["label"] == "positive") == positive)
pct = lambda k: f"{right.get(k, 0) / max(done, 1):.3f}"
with open(consensus_md, "a") as f:
    f.write(f"| {name} | {len(truth)} | {done} | {pct('lexicon')} | {pct('minilm')} | {pct('smollm2')} | {pct('consensus')} |\n")
with open(models_md, "a") as f:
    for m in json.load(open(models)):
        g = m["gold"]
        if g["answered"]:
            f.write(f"| {name} | {m['model']} | {m.get('model_hash', '-')[:12]} | {g['answered']} | {g['right'] / g['answered']:.3f} |\n")
PY
    # Everything but nats-server stops before the next set.
    for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
    wait "${pids[@]:1}" 2>/dev/null || true
    pids=("${pids[0]}")
done
echo "Gold accuracy per model (each model answers about half its leases as gold):"
cat "$tmp/models.md"
echo
echo "Accuracy on the tasks (every one answered by all three models):"
cat "$tmp/consensus.md"
