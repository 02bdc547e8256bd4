#!/usr/bin/env bash
# The scale-out demo: PostgreSQL, three routed nats-server nodes, two coordinators on different
# nodes sharing the database, three workers spread over the nodes; tasks in; one coordinator and
# one NATS node killed (SIGKILL) mid-run, on screen; every task still finalized once; the
# leaderboard and the running coordinators out; everything stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/debug/aimarket}"
dir="$(pwd)/target/demo-cluster"
rm -rf "$dir" && mkdir -p "$dir"
nats="$(scripts/setup.sh)"

free_port() {
    local p=$1
    while (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}
pg_port="$(free_port 55432)"
client_ports=() route_ports=()
next=4222
for _ in 1 2 3; do p="$(free_port $next)"; client_ports+=("$p"); next=$((p + 1)); done
next=6222
for _ in 1 2 3; do p="$(free_port $next)"; route_ports+=("$p"); next=$((p + 1)); done
routes="nats://127.0.0.1:${route_ports[0]},nats://127.0.0.1:${route_ports[1]},nats://127.0.0.1:${route_ports[2]}"
# Every process lists all three nodes, its own first.
urls_from() {
    local i=$1 out="" k
    for k in 0 1 2; do
        out+="${out:+,}nats://127.0.0.1:${client_ports[$(((i + k) % 3))]}"
    done
    echo "$out"
}
export AIMARKET_PREFIX="aimarket" AIMARKET_NATS_PING_SECONDS=1

declare -A pid
stop_all() {
    for name in w3 w2 w1 c2 c1 n3 n2 n1; do
        [ -n "${pid[$name]:-}" ] || continue
        kill -TERM "${pid[$name]}" 2>/dev/null || true
        wait "${pid[$name]}" 2>/dev/null || true
    done
    scripts/postgres.sh stop "$dir/pg"
}
trap stop_all EXIT

db="$(scripts/postgres.sh start "$dir/pg" "$pg_port")"
echo "==> PostgreSQL at $db (data in $dir/pg)"

start_node() {
    local i=$1
    "$nats" -a 127.0.0.1 -p "${client_ports[$i]}" -n "n$((i + 1))" --cluster_name aimarket \
        --cluster "nats://127.0.0.1:${route_ports[$i]}" --routes "$routes" \
        >>"$dir/nats-n$((i + 1)).log" 2>&1 &
    pid[n$((i + 1))]=$!
}
for i in 0 1 2; do start_node "$i"; done
for i in 0 1 2; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/${client_ports[$i]}) 2>/dev/null && break; sleep 0.05; done
done
sleep 1
echo "==> NATS cluster: n1 :${client_ports[0]}, n2 :${client_ports[1]}, n3 :${client_ports[2]}"

start_coordinator() {
    local i=$1 http
    http="$(free_port $((8000 + i * 10)))"
    NATS_URL="$(urls_from "$i")" "$bin" coordinator --db "$db" --http "127.0.0.1:$http" \
        --heartbeat-ttl-seconds 6 --lease-seconds 8 --requeue-sweep-seconds 1 \
        >>"$dir/coordinator-$((i + 1)).log" 2>&1 &
    pid[c$((i + 1))]=$!
    echo "==> coordinator c$((i + 1)) on node n$((i + 1)), dashboard http://127.0.0.1:$http/dashboard"
}
start_coordinator 0
start_coordinator 1
export NATS_URL="$(urls_from 2)"
for _ in $(seq 200); do "$bin" stats >/dev/null 2>&1 && break; sleep 0.1; done

for i in 0 1 2; do
    name="w$((i + 1))"
    NATS_URL="$(urls_from "$i")" "$bin" worker --id "$name" --model lexicon --batch 8 \
        --extra-latency-ms 30 >"$dir/worker-$name.log" 2>&1 &
    pid[$name]=$!
done
echo "==> workers w1, w2, w3 (lexicon), one per node"

n=900
for i in $(seq 1 $n); do
    if [ $((i % 2)) = 0 ]; then echo "review $i: wonderful, I love it"; else echo "review $i: awful, I hate it"; fi
done >"$dir/tasks.txt"
"$bin" task add --file "$dir/tasks.txt"
finalized() {
    "$bin" --json stats 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["tasks_by_status"].get("finalized", 0))' 2>/dev/null || echo "?"
}
sleep 2
echo "==> $(finalized) of $n finalized: killing coordinator c1 (SIGKILL)"
kill -KILL "${pid[c1]}"; wait "${pid[c1]}" 2>/dev/null || true; unset 'pid[c1]'
sleep 2
echo "==> $(finalized) of $n finalized with c2 alone: killing NATS node n2, c2's node (SIGKILL)"
kill -KILL "${pid[n2]}"; wait "${pid[n2]}" 2>/dev/null || true; unset 'pid[n2]'
sleep 2
echo "==> $(finalized) of $n finalized: restarting c1 and n2"
start_node 1
start_coordinator 0
for _ in $(seq 600); do
    [ "$(finalized)" = "$n" ] && break
    sleep 0.2
done
echo "==> $(finalized) of $n finalized"
"$bin" leaderboard
"$bin" coordinators
echo "==> logs in $dir"
