#!/usr/bin/env bash
# Starts nats-server with nats.conf in the background unless something already listens on 4222.
set -euo pipefail
cd "$(dirname "$0")/.."
if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "nats: already listening on 127.0.0.1:4222" >&2
    exit 0
fi
mkdir -p target
nats="$(scripts/setup.sh)"
nohup "$nats" -c nats.conf >target/nats-server.log 2>&1 &
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && { echo "nats: started (pid $!, log target/nats-server.log)" >&2; exit 0; }
    sleep 0.05
done
echo "nats: did not come up; see target/nats-server.log" >&2
exit 1
