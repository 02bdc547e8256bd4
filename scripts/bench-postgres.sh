#!/usr/bin/env bash
# The store side by side under one load (N tasks x 3 votes, 3 workers, batch 32): one
# coordinator on SQLite, then one and two coordinators on a fresh PostgreSQL database each (a
# server started in a temp dir by scripts/postgres.sh), alternated RUNS times (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20000}"
runs="${2:-3}"
bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/release/aimarket}"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(scripts/setup.sh)}"
dir="$(mktemp -d)"
chmod 755 "$dir" # the server runs as the postgres user when this runs as root
port=55432
while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((port + 1)); done
trap 'scripts/postgres.sh stop "$dir/pg"; rm -rf "$dir"' EXIT
url="$(scripts/postgres.sh start "$dir/pg" "$port")"
pg_bin="$(scripts/setup.sh --postgres)"
load=(bench --tasks "$n" --workers 3 --required 3 --batch 32 --bulk 0)
for run in $(seq "$runs"); do
    echo "== run $run: sqlite, 1 coordinator"
    "$bin" "${load[@]}"
    for c in 1 2; do
        db="bench_${run}_$c"
        "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
        echo "== run $run: postgres, $c coordinator(s)"
        "$bin" "${load[@]}" --db "postgres://postgres@127.0.0.1:$port/$db" --coordinators "$c"
    done
done
