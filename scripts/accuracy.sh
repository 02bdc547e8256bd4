#!/usr/bin/env bash
# Accuracy as the coordinator measures it, on the human-rated sentences of the VADER study
# (scripts/fetch-sentences.sh), for each set (product reviews, movie reviews):
#
# 1. Calibration: G gold sentences (from the set, none of them a task) are added as gold items;
#    a coordinator with --gold-rate 1 hands them to one worker of each model (lexicon, MiniLM,
#    SmolLM2) until each has answered every one (this is the calibration the posterior policy
#    weighs answers by).
# 2. Tasks: N other sentences, spread evenly over the file, are added three times, once per
#    vote policy: `quorum` needing 3 answers, `posterior` needing 3, and `posterior` needing 1
#    (adaptive: more answers only while the posterior falls short), all with distinct models.
#    Gold keeps flowing at 10% of the leases.
#
# Reports each model's accuracy (on the quorum tasks, which every model answers), and for each
# policy the share of tasks it finalized, the accuracy of what it finalized, that accuracy
# counting the tasks it did not finalize as wrong, and the mean answers per task.
#
# Usage: scripts/accuracy.sh [N] [G] [THRESHOLD]   (defaults 200, 200, 0.8)
#        ACCURACY_OUT=DIR keeps the tasks' details (JSON) and the sentences there.
#        STRONG_FIRST_MS=W runs the tasks' coordinator with --strong-first-ms W (default 0):
#        a posterior task's first answer waits up to W ms for the best calibrated model.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
g=${2:-200}
threshold=${3:-0.8}
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
    # ACCURACY_OUT=DIR keeps every task's detail and the sentences, for a look afterwards.
    if [ -n "${ACCURACY_OUT:-}" ]; then
        mkdir -p "$ACCURACY_OUT" && cp "$tmp"/*.json "$tmp"/*.tsv "$tmp"/*.md "$ACCURACY_OUT"/ 2>/dev/null || true
    fi
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

coordinator() { # SET GOLD_RATE [STRONG_FIRST_MS]
    "$bin" --prefix "acc$1" coordinator --db "$tmp/$1.db" --http off --gold-rate "$2" \
        --gold-min-answers 1000000 --distinct-models --strong-first-ms "${3:-0}" \
        >>"$tmp/coordinator-$1.log" 2>&1 &
    coord=$!
    pids+=("$coord")
    until "$bin" --prefix "acc$1" stats >/dev/null 2>&1; do sleep 0.2; done
}

declare -A worker_pid
workers() { # SET
    "$bin" --prefix "acc$1" worker --id "lexicon-$1" --model lexicon --batch 8 >>"$tmp/w1.log" 2>&1 &
    worker_pid[lexicon]=$!
    "$bin" --prefix "acc$1" worker --id "minilm-$1" --model minilm --model-dir "$minilm" --batch 8 >>"$tmp/w2.log" 2>&1 &
    worker_pid[minilm]=$!
    "$bin" --prefix "acc$1" worker --id "smollm2-$1" --model smollm2 --model-dir "$smollm2" --batch 8 >>"$tmp/w3.log" 2>&1 &
    worker_pid[smollm2]=$!
    pids+=("${worker_pid[@]}")
}

printf '| set | model | gold answers | gold accuracy | Brier |\n|---|---|---|---|---|\n' >"$tmp/models.md"
printf '| set | tasks | lexicon | MiniLM | SmolLM2 | policy | finalized | accuracy of finalized | accuracy, unfinalized as wrong | answers per task |\n|---|---|---|---|---|---|---|---|---|---|\n' >"$tmp/consensus.md"
for set in amazonReviewSnippets movieReviewSnippets; do
    name=${set%ReviewSnippets}
    python3 - "$sentences/${set}_GroundTruth.txt" "$n" "$g" "$tmp/$name" <<'PY'
import sys
src, n, g, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [l.rstrip("\n").split("\t", 2) for l in open(src, encoding="utf-8")]
rows = [r for r in rows if len(r) == 3 and float(r[1]) != 0.0]
# Tasks on odd positions of an even spread, gold on even ones: no sentence is both.
step = len(rows) / (2 * max(n, g))
tasks = [rows[int((2 * i + 1) * step)] for i in range(n)]
gold = [rows[int(2 * i * step)] for i in range(g)]
with open(out + ".tsv", "w") as f:
    f.writelines("\t".join(r) + "\n" for r in tasks)
with open(out + ".txt", "w") as f:
    f.writelines(r[2] + "\n" for r in tasks)
with open(out + ".gold.tsv", "w") as f:
    f.writelines("\t".join(r) + "\n" for r in gold)
PY
    prefix="acc$name"
    coordinator "$name" 1
    "$bin" --prefix "$prefix" gold add --file "$tmp/$name.gold.tsv" >&2
    workers "$name"
    # Gold rides along in place of real tasks a lease walk finds: bait tasks keep the walk
    # busy while the calibration runs (never answered: every slot is gold). Each worker stops
    # once it has answered every gold item once.
    for _ in 1 2 3 4 5 6 7 8; do echo "calibration bait"; done >"$tmp/bait.txt"
    "$bin" --prefix "$prefix" --json task add --file "$tmp/bait.txt" --required 1 >/dev/null
    left="lexicon minilm smollm2"
    while [ -n "$left" ]; do
        sleep 1
        "$bin" --prefix "$prefix" --json leaderboard --by-model >"$tmp/calibrating.json"
        for m in $left; do
            answered=$(python3 -c '
import json, sys
print(sum(x["gold"]["answered"] for x in json.load(open(sys.argv[1])) if x["model"].split("/")[0] == sys.argv[2]))' \
                "$tmp/calibrating.json" "$m")
            if [ "$answered" -ge "$g" ]; then
                kill "${worker_pid[$m]}" 2>/dev/null || true
                left=$(echo "$left" | tr ' ' '\n' | { grep -vx "$m" || true; } | tr '\n' ' ' | sed 's/ *$//')
            fi
        done
    done
    wait "${worker_pid[@]}" 2>/dev/null || true
    kill "$coord"; wait "$coord" 2>/dev/null || true
    coordinator "$name" 0.1 "${STRONG_FIRST_MS:-0}"
    workers "$name"
    for policy in quorum:3 posterior:3 posterior:1; do
        # Three models, one answer each at most: no task may wait for a fourth.
        "$bin" --prefix "$prefix" --json task add --file "$tmp/$name.txt" --policy "${policy%:*}" \
            --required "${policy#*:}" --max-answers 3 \
            $([ "${policy%:*}" = posterior ] && echo --threshold "$threshold") \
            >"$tmp/$name.${policy/:/-}.ids"
    done
    for policy in quorum-3 posterior-3 posterior-1; do
        ids=$(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["task_ids"]))' "$tmp/$name.$policy.ids")
        # shellcheck disable=SC2086
        "$bin" --prefix "$prefix" --json task wait --timeout 3600 $ids >/dev/null || true
        for id in $ids; do "$bin" --prefix "$prefix" --json task get "$id"; done >"$tmp/$name.$policy.json"
    done
    "$bin" --prefix "$prefix" --json leaderboard --by-model >"$tmp/$name.models.json"
    python3 - "$name" "$tmp" <<'PY'
import json, sys
name, tmp = sys.argv[1:]
truth = [float(l.split("\t", 2)[1]) > 0 for l in open(f"{tmp}/{name}.tsv", encoding="utf-8")]
def tasks(policy):
    text, out, at, dec = open(f"{tmp}/{name}.{policy}.json").read(), [], 0, json.JSONDecoder()
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        t, at = dec.raw_decode(text, at)
        out.append(t)
    return out
single = {}
quorum = tasks("quorum-3")
for t, positive in zip(quorum, truth):
    for s in t["submissions"]:
        m = s["model"].split("/")[0]
        r, k = single.get(m, (0, 0))
        single[m] = (r + ((s["label"] == "positive") == positive), k + 1)
acc = lambda m: f"{single[m][0] / single[m][1]:.3f}" if m in single else "-"
rows = []
for policy in ["quorum-3", "posterior-3", "posterior-1"]:
    ts = tasks(policy)
    done = [(t, p) for t, p in zip(ts, truth) if t["task"]["status"] == "finalized"]
    right = sum((t["task"]["final_label"] == "positive") == p for t, p in done)
    answers = sum(len(t["submissions"]) for t in ts) / len(ts)
    rows.append(f"| {name} | {len(ts)} | {acc('lexicon')} | {acc('minilm')} | {acc('smollm2')} | {policy} "
                f"| {len(done) / len(ts):.3f} | {right / max(len(done), 1):.3f} | {right / len(ts):.3f} | {answers:.2f} |\n")
open(f"{tmp}/consensus.md", "a").writelines(rows)
with open(f"{tmp}/models.md", "a") as f:
    for m in json.load(open(f"{tmp}/{name}.models.json")):
        g, c = m["gold"], m.get("calibration")
        if g["answered"] and m["type"] == "sentiment":
            brier = f"{c['brier']:.3f}" if c else "-"
            f.write(f"| {name} | {m['model']} | {g['answered']} | {g['right'] / g['answered']:.3f} | {brier} |\n")
PY
    # Everything but nats-server stops before the next set.
    kill "$coord" 2>/dev/null || true
    for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
    wait "${pids[@]:1}" "$coord" 2>/dev/null || true
    pids=("${pids[0]}")
done
echo "Gold accuracy and calibration per model (calibration phase plus the gold that rides along):"
cat "$tmp/models.md"
echo
echo "Accuracy on the tasks (threshold $threshold for the posterior policy; distinct models):"
cat "$tmp/consensus.md"
