# Sourced by the benchmark scripts: starts a nats-server on a free port from $1 and a
# coordinator on a fresh database in $dir (HTTP off), exports NATS_URL and AIMARKET_PREFIX=$2,
# and records both in the caller's `pids`, which its EXIT trap kills. Needs $nats, $bin, $dir.
bench_cluster() {
    local port="$1"
    while (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do port=$((port + 1)); done
    export NATS_URL="nats://127.0.0.1:$port" AIMARKET_PREFIX="$2"
    "$nats" -p "$port" >"$dir/nats.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
    "$bin" coordinator --db "$dir/c.db" --http off >"$dir/coordinator.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do "$bin" stats >/dev/null 2>&1 && break; sleep 0.05; done
}
