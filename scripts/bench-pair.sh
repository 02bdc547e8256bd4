#!/usr/bin/env bash
# Two builds of aimarket side by side under one load (N tasks x 3 votes, 3 workers, batch 32):
# on SQLite, and on PostgreSQL with two coordinators (a fresh database each, on a server started
# in a temp dir by scripts/postgres.sh), alternated RUNS times with the order swapped every run,
# so drift on a shared machine falls on both alike.
#   scripts/bench-pair.sh BEFORE_BIN AFTER_BIN [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
before="$1"
after="$2"
n="${3:-20000}"
runs="${4:-3}"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(scripts/setup.sh)}"
dir="$(mktemp -d)"
chmod 755 "$dir" # the server runs as the postgres user when this runs as root
port=56432
while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((port + 1)); done
trap 'scripts/postgres.sh stop "$dir/pg"; rm -rf "$dir"' EXIT
scripts/postgres.sh start "$dir/pg" "$port" >/dev/null
pg_bin="$(scripts/setup.sh --postgres)"
load=(bench --tasks "$n" --workers 3 --required 3 --batch 32 --bulk 0)
show='finalized tasks/s|lease round trip|submit round trip|coordinator CPU|postgres CPU'
for run in $(seq "$runs"); do
    order="before after"
    [ $((run % 2)) -eq 0 ] && order="after before"
    for which in $order; do
        bin="$before"
        [ "$which" = after ] && bin="$after"
        echo "== run $run: $which, sqlite"
        "$bin" "${load[@]}" | grep -E "$show"
    done
    for which in $order; do
        bin="$before"
        [ "$which" = after ] && bin="$after"
        db="pair_${run}_$which"
        "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
        echo "== run $run: $which, postgres, 2 coordinators"
        "$bin" "${load[@]}" --db "postgres://postgres@127.0.0.1:$port/$db" --coordinators 2 \
            | grep -E "$show"
    done
done
