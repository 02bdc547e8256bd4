#!/usr/bin/env bash
# A throwaway PostgreSQL server for `make bench-postgres` and `make demo-cluster`.
#
#   scripts/postgres.sh start DIR [PORT]   creates a cluster in DIR (if new), starts it on
#                                          127.0.0.1:PORT (default 55432) and prints its URL
#   scripts/postgres.sh stop DIR           stops it (immediate: nothing in it is kept)
#
# Installs Debian's postgresql when missing (scripts/setup.sh --postgres). initdb and postgres
# refuse to run as root: as root, the server runs as the `postgres` user the package creates.
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }

cmd="${1:?usage: postgres.sh start|stop DIR [PORT]}"
dir="${2:?usage: postgres.sh start|stop DIR [PORT]}"
port="${3:-55432}"
bin="$(dirname "$0")/setup.sh"
bin="$("$bin" --postgres)"

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$dir" && chmod 755 "$dir"
        runuser -u postgres -- test -x "$dir" || {
            say "the postgres user cannot reach $dir (a parent directory is private): use another"
            exit 1
        }
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "$bin/initdb" --auth=trust --username=postgres --encoding=UTF8 --no-sync \
            --pgdata "$dir/data" >/dev/null
    fi
    as_pg "$bin/pg_ctl" start -w -D "$dir/data" -l "$dir/postgres.log" \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=200" \
        >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    as_pg "$bin/pg_ctl" stop -m immediate -D "$dir/data" >/dev/null 2>&1 || true
    ;;
*)
    say "unknown command $cmd"
    exit 1
    ;;
esac
