#!/usr/bin/env bash
# ferry against redis-server with redis-benchmark, in one run: QPUT / QGET
# NOWAIT NOACK against LPUSH / RPOP, 16-byte payloads, 50 clients, with no
# pipelining and with 16 commands in flight; then server memory per queued
# 16-byte message with 1,000,000 queued. Prints ferry/redis ratios (above
# 1.0: ferry is faster / uses less).
#
#   bench/resp.sh            full run (a minute or two)
#   bench/resp.sh --quick    a smoke test with few requests
#
# Both servers listen on 127.0.0.1 only, on free ports, and are stopped at
# the end. ferry runs in memory mode; redis with persistence off.
set -euo pipefail
cd "$(dirname "$0")/.."

n=400000
queued=1000000
if [[ "${1:-}" == "--quick" ]]; then
    n=5000
    queued=20000
fi
clients=50
payload=0123456789abcdef

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "bench/resp.sh needs $tool (Debian: redis-server, redis-tools)" >&2; exit 1; }
done
cargo build --release -q -p ferry-cli
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_ferry() {
    ./target/release/ferry serve --port 0 --data-dir "$work/ferry" >"$work/ferry.out" 2>"$work/ferry.err" &
    pids+=($!)
    ferry_pid=$!
    for _ in $(seq 100); do
        if [[ -s "$work/ferry.out" ]]; then break; fi
        sleep 0.05
    done
    ferry_port=$(head -1 "$work/ferry.out" | sed 's/.*://')
}

start_redis() {
    redis_port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
    pids+=($!)
    redis_pid=$!
    for _ in $(seq 100); do
        redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break
        sleep 0.05
    done
}

# requests per second of one redis-benchmark run
rps() {
    local port=$1 pipeline=$2 requests=$3; shift 3
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -n "$requests" -P "$pipeline" -q "$@" 2>/dev/null \
        | tr '\r' '\n' | grep 'requests per second' | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/'
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_ferry
start_redis
echo "ferry $(./target/release/ferry --version | awk '{print $2}') on :$ferry_port, $(redis-server --version | awk '{print $1, $2, $3}') on :$redis_port; $clients clients, $n requests" >&2

printf '%-24s %14s %14s %8s\n' workload "ferry ops/s" "redis ops/s" ratio
for pipeline in 1 16; do
    f=$(rps "$ferry_port" "$pipeline" "$n" QPUT q "$payload")
    r=$(rps "$redis_port" "$pipeline" "$n" LPUSH q "$payload")
    printf '%-24s %14.0f %14.0f %8.2f\n' "put -P $pipeline" "$f" "$r" "$(python3 -c "print($f/$r)")"
    f=$(rps "$ferry_port" "$pipeline" "$n" QGET q NOWAIT NOACK)
    r=$(rps "$redis_port" "$pipeline" "$n" RPOP q)
    printf '%-24s %14.0f %14.0f %8.2f\n' "get -P $pipeline" "$f" "$r" "$(python3 -c "print($f/$r)")"
done

# Memory per queued message: fresh servers, RSS before and after.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
start_ferry
start_redis
f0=$(rss_kb "$ferry_pid"); r0=$(rss_kb "$redis_pid")
rps "$ferry_port" 64 "$queued" QPUT mem "$payload" >/dev/null
rps "$redis_port" 64 "$queued" LPUSH mem "$payload" >/dev/null
fq=$(redis-cli -p "$ferry_port" QLEN mem); rq=$(redis-cli -p "$redis_port" LLEN mem)
f1=$(rss_kb "$ferry_pid"); r1=$(rss_kb "$redis_pid")
fb=$(python3 -c "print(($f1-$f0)*1024/$fq)"); rb=$(python3 -c "print(($r1-$r0)*1024/$rq)")
printf '%-24s %14.1f %14.1f %8.2f\n' "bytes/queued msg" "$fb" "$rb" "$(python3 -c "print($rb/$fb)")"
echo "(memory: RSS growth over $fq queued 16-byte messages; ratio is redis/ferry, above 1.0 means ferry uses less)" >&2
