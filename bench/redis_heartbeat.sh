#!/usr/bin/env bash
# Renewal traffic and a dead consumer's recovery on the Redis engine, for
# two ferry binaries (an old and a new build): `ferry worker -j K` holds K
# messages (K holders) for WINDOW seconds while INFO commandstats counts
# the FCALLs and ZADDs Redis runs; then the worker is killed (-9) and the
# time until another consumer gets a message back is measured.
#   bench/redis_heartbeat.sh OLD_FERRY NEW_FERRY [K] [WINDOW]
set -euo pipefail
old=$1 new=$2 k=${3:-8} window=${4:-30}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/log" 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 500); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.01; done
url="redis://127.0.0.1:$port"
stat() { redis-cli -p "$port" info commandstats | tr -d '\r' | awk -F'[=,:]' -v c="cmdstat_$1" '$1==c {print $3}'; }
for build in old new; do
    bin=${!build}
    q="hb-$build"
    for i in $(seq "$k"); do "$bin" put "$q" "m$i" --url "$url" >/dev/null; done
    FERRY_URL=$url "$bin" worker "$q" -j "$k" -- sleep 3600 2>/dev/null &
    wpid=$!
    until [ "$("$bin" info "$q" --url "$url" | awk '/^leased:/ {print $2}')" = "$k" ]; do sleep 0.1; done
    f0=$(stat fcall); z0=$(stat zadd)
    sleep "$window"
    f1=$(stat fcall); z1=$(stat zadd)
    kill -9 "$wpid"; wait "$wpid" 2>/dev/null || true
    t0=$(date +%s.%N)
    "$bin" get "$q" --timeout 120 --url "$url" >/dev/null
    t1=$(date +%s.%N)
    printf '%s: %d held by %d holders, %ss: %d FCALLs, %d ZADDs (%.1f/min); back %.1f s after kill -9\n' \
        "$build" "$k" "$k" "$window" $((f1 - f0)) $((z1 - z0)) "$(echo "($z1 - $z0) * 60 / $window" | bc -l)" \
        "$(echo "$t1 - $t0" | bc -l)"
    pkill -9 -f "sleep 3600" 2>/dev/null || true
done
