#!/usr/bin/env bash
# Two ferry binaries under redis-benchmark in one run, alternating (two
# rounds each), so that a change to the connection or command path is
# measured against the code before it on the same noisy machine:
#
#   bench/ab.sh OLD_FERRY NEW_FERRY [REQUESTS]
#
# Memory mode, 50 clients, 16-byte payloads: QPUT and QGET NOWAIT NOACK at
# -P 1 and -P 16. Prints requests per second per binary and round.
# Servers listen on 127.0.0.1 only and are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap stop_all EXIT
(($# >= 2)) || { echo "usage: bench/ab.sh OLD_FERRY NEW_FERRY [REQUESTS]" >&2; exit 2; }
n=${3:-200000}
rps() { grep -o '[0-9.]* requests' | cut -d' ' -f1; }
for round in 1 2; do
    for bin in "$1" "$2"; do
        dir=$(mktemp -d)
        "$bin" serve --port 0 --durability memory --data-dir "$dir/data" >"$dir/out" 2>/dev/null &
        pids+=($!)
        for _ in $(seq 500); do [[ -s "$dir/out" ]] && break; sleep 0.01; done
        port=$(head -1 "$dir/out" | sed 's/.*://')
        line="round $round $bin:"
        for p in 1 16; do
            put=$(redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$n" -P "$p" -q QPUT q 0123456789abcdef 2>/dev/null | rps)
            get=$(redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$n" -P "$p" -q QGET q NOWAIT NOACK 2>/dev/null | rps)
            line="$line  -P $p put $put get $get"
        done
        echo "$line"
        stop_all
        rm -rf "$dir"
    done
done
