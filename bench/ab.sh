#!/usr/bin/env bash
# Two ferry binaries under redis-benchmark in one run, alternating (two
# rounds each), so that a change to the connection or command path is
# measured against the code before it on the same noisy machine:
#
#   bench/ab.sh OLD_FERRY NEW_FERRY [REQUESTS]
#
# Memory mode, 50 clients, 16-byte payloads: QPUT and QGET NOWAIT NOACK at
# -P 1 and -P 16. Prints requests per second per binary and round, each
# with the server's CPU time per request in µs (user + system, all its
# threads, from /proc): steadier than requests/s on a shared machine.
# Servers listen on 127.0.0.1 only and are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap stop_all EXIT
(($# >= 2)) || { echo "usage: bench/ab.sh OLD_FERRY NEW_FERRY [REQUESTS]" >&2; exit 2; }
n=${3:-200000}
rps() { grep -o '[0-9.]* requests' | cut -d' ' -f1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# bench PORT PID PIPELINE COMMAND...: "requests/s (µs CPU per request)"
bench() {
    local port=$1 pid=$2 p=$3; shift 3
    local t0 r t1
    t0=$(ticks "$pid")
    r=$(redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$n" -P "$p" -q "$@" 2>/dev/null | rps)
    t1=$(ticks "$pid")
    echo "$r ($(python3 -c "print(f'{($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $n:.2f}')") µs)"
}
for round in 1 2; do
    for bin in "$1" "$2"; do
        dir=$(mktemp -d)
        "$bin" serve --port 0 --durability memory --data-dir "$dir/data" >"$dir/out" 2>/dev/null &
        pid=$!
        pids+=("$pid")
        for _ in $(seq 500); do [[ -s "$dir/out" ]] && break; sleep 0.01; done
        port=$(head -1 "$dir/out" | sed 's/.*://')
        line="round $round $bin:"
        for p in 1 16; do
            put=$(bench "$port" "$pid" "$p" QPUT q 0123456789abcdef)
            get=$(bench "$port" "$pid" "$p" QGET q NOWAIT NOACK)
            line="$line  -P $p put $put get $get"
        done
        echo "$line"
        stop_all
        rm -rf "$dir"
    done
done
