#!/usr/bin/env bash
# ferry against its peers, side by side, in one run: starts each broker
# from Debian's packages on a loopback port (data on disk, under
# target/bench-data), drives it with crates/ferry-loadgen, stops it, and writes
# every measurement as a JSON line. Then bench/report.py turns them into
# BENCHMARKS.md and the charts in bench/charts/.
#
#   bench/run.sh            the full run; regenerates BENCHMARKS.md (~12 min)
#   bench/run.sh --quick    a few thousand messages per peer, to keep the
#                           harness working (the test command runs this);
#                           writes its report under target/, not the repo
#
# Peers, by durability class (ratios compare ferry with the peers of its
# own class):
#   memory  ferry --durability memory (TCP and Unix socket), Redis lists and
#           streams without persistence, beanstalkd without binlog, NATS
#           JetStream with memory storage, Python multiprocessing
#   async   ferry --durability async, Redis appendfsync everysec, beanstalkd
#           binlog fsynced every second (-f 1000), NATS JetStream file
#           storage (nats-server 2.9 fsyncs that every 2 minutes)
#   sync    ferry --durability sync, Redis appendfsync always, beanstalkd
#           binlog fsynced on every write (-f 0)
# And ferry's own client on a Redis server (ferry-redis: the redis://
# backend) and on a Redis Cluster of 3 primaries and 3 replicas
# (ferry-redis-cluster, scripts/redis-cluster.sh), at the memory class,
# beside raw Redis streams. The cluster's 6 servers share this machine's
# cores with the load generator.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

for tool in redis-server beanstalkd nats-server; do
    command -v "$tool" >/dev/null || { echo "bench/run.sh needs $tool (Debian: redis-server, beanstalkd, nats-server)" >&2; exit 1; }
done

if ((quick)); then
    profile=debug
    cargo build -q -p ferry-cli -p ferry-loadgen
    b4=4000
    n1=2000; n100=4000; nsync1=1000; nsync100=4000; n64=640
    lat_rate=2000; lat_n=500; idle=200; blocked=50; filln=20000; queues=100; per=10; pyn=5000; pyaio=2000
    md=target/bench-quick/BENCHMARKS.md; charts=target/bench-quick/charts
else
    profile=release
    cargo build --release -q -p ferry-cli -p ferry-loadgen
    # The Python rows measure the package as users get it: in release.
    if [[ -x .venv/bin/maturin ]]; then
        (cd python && ../.venv/bin/maturin develop --release -q)
    fi
    b4=400000
    n1=100000; n100=400000; nsync1=20000; nsync100=200000; n64=64000
    lat_rate=5000; lat_n=25000; idle=10000; blocked=1000; filln=1000000; queues=10000; per=100; pyn=200000; pyaio=200000
    md=BENCHMARKS.md; charts=bench/charts
fi
ferry_bin=target/$profile/ferry
loadgen=target/$profile/loadgen
work="$PWD/target/bench-data/run-$$"
mkdir -p "$work" "$charts"
results="$work/results.jsonl"
: >"$results"
source bench/lib.sh
trap 'stop_all; rm -rf "$work/data"' EXIT


# start TARGET CLASS: starts a fresh server; sets pid and addr.
start() {
    local target=$1 class=$2 dir="$work/data/$1-$2-$RANDOM" port
    mkdir -p "$dir"
    port=$(free_port)
    case $target in
        ferry|ferry-unix|ferry-noack)
            "$ferry_bin" serve --bind 127.0.0.1 --port "$port" --http off --durability "$class" --data-dir "$dir" \
                --unix "$dir/ferry.sock" --max-clients 20000 >"$dir/out" 2>"$dir/err" &
            ;;
        redis-list|redis-stream|ferry-redis)
            local aof=(--appendonly no)
            [[ $class == async ]] && aof=(--appendonly yes --appendfsync everysec)
            [[ $class == sync ]] && aof=(--appendonly yes --appendfsync always)
            redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' "${aof[@]}" \
                --maxclients 20000 --daemonize no >"$dir/log" 2>&1 &
            ;;
        beanstalkd)
            local binlog=()
            [[ $class == async ]] && binlog=(-b "$dir" -f 1000)
            [[ $class == sync ]] && binlog=(-b "$dir" -f 0)
            beanstalkd -l 127.0.0.1 -p "$port" "${binlog[@]}" >"$dir/log" 2>&1 &
            ;;
        nats-memory|nats-file)
            nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir" >"$dir/log" 2>&1 &
            ;;
        ferry-redis-cluster)
            # 3 primaries + 3 replicas, without persistence: stopped by PID.
            local url
            url=$(scripts/redis-cluster.sh start "$dir")
            for f in "$dir"/*/pid; do pids+=("$(cat "$f")"); done
            addr=${url#redis+cluster://}
            pid=
            return 0
            ;;
    esac
    pid=$!
    pids+=("$pid")
    wait_port "$port"
    addr="127.0.0.1:$port"
    [[ $target == ferry-unix ]] && addr="unix:$dir/ferry.sock"
    return 0
}

# The loadgen target for a row's target.
lg_target() { case $1 in ferry-unix) echo ferry;; *) echo "$1";; esac; }

# run TARGET CLASS NAME [--limit S] WORKLOAD ARGS...: one measurement on a
# fresh server. A run that fails or passes its time limit is recorded as
# such (a row the report shows), and fails a --quick run.
run() {
    local target=$1 class=$2 name=$3 limit=300; shift 3
    [[ $1 == --limit ]] && { limit=$2; shift 2; }
    start "$target" "$class"
    local label="$target $class" before
    before=$(wc -l <"$results")
    if RUST_BACKTRACE=0 "$loadgen" --target "$(lg_target "$target")" --addr "$addr" --label "$label" --name "$name" \
        --timeout-s "$limit" "${@//@PID@/$pid}" >>"$results" 2>"$work/lg.err"; then
        tail -n +"$((before + 1))" "$results" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("  %s / %s: %.1f %s" % (r["workload"], r["label"], r["value"], r["unit"]), file=sys.stderr)' || true
    else
        local why
        why=$(grep -v '^\s*$' "$work/lg.err" | tail -1)
        echo "  $name / $label: FAILED: $why" >&2
        python3 -c 'import json, sys; print(json.dumps({"workload": sys.argv[1], "label": sys.argv[2], "value": None, "unit": "", "failed": sys.argv[3]}))' \
            "$name" "$label" "$why" >>"$results"
        ((quick)) && failed=1
    fi
    stop_all
}

failed=0
# ferry-noack gets with NOACK: the contract of a Redis list's BRPOP, so the
# Redis list rows compare with it.
targets_memory=(ferry ferry-unix ferry-noack redis-list redis-stream beanstalkd nats-memory)
targets_async=(ferry ferry-noack redis-list redis-stream beanstalkd nats-file)
targets_sync=(ferry ferry-noack redis-list redis-stream beanstalkd)

for class in memory async sync; do
    declare -n targets="targets_$class"
    b1=$n1; b100=$n100
    [[ $class == sync ]] && { b1=$nsync1; b100=$nsync100; }
    echo "== $class" >&2
    for t in "${targets[@]}"; do
        run "$t" "$class" "throughput B=1" throughput -n "$b1" --batch 1
        run "$t" "$class" "throughput B=100" throughput -n "$b100" --batch 100
    done
done

echo "== async: 4 producers, 4 consumers, batches of 100, acknowledged (ferry and Redis streams)" >&2
for t in ferry redis-stream; do
    run "$t" async "4p4c B=100" throughput -n "$b4" --batch 100 --producers 4 --consumers 4
    # Each batch put as pipelined single puts: the shape Redis streams
    # have (XADD per message), without ferry's QPUTMANY.
    run "$t" async "4p4c B=100, single puts" throughput -n "$b4" --batch 100 --producers 4 --consumers 4 --single-puts
done

echo "== ferry's client on Redis and on a Redis Cluster, beside raw Redis streams" >&2
for t in ferry-redis ferry-redis-cluster; do
    run "$t" memory "throughput B=1" throughput -n "$n1" --batch 1
    run "$t" memory "throughput B=100" throughput -n "$n100" --batch 100
    run "$t" memory "$queues queues x $per" --limit 120 queues --queues "$queues" --per "$per"
done

echo "== memory: latency, connections, queued messages, 64 producers, many queues" >&2
for t in "${targets_memory[@]}"; do
    run "$t" memory "latency at $lat_rate/s" latency --rate "$lat_rate" -n "$lat_n"
    [[ $t == ferry-unix ]] && continue
    run "$t" memory "64 producers" throughput -n "$n64" --batch 1 --producers 64
    if [[ $t == nats-memory ]]; then
        echo "  $queues queues: nats-memory skipped (a JetStream stream per queue is a heavyweight object; $queues of them is not how NATS is used)" >&2
    else
        run "$t" memory "$queues queues x $per" --limit 120 queues --queues "$queues" --per "$per"
    fi
    [[ $t == ferry-noack ]] && continue   # the rows below measure the server, not the get mode
    run "$t" memory "memory per connection" conns --idle "$idle" --blocked "$blocked" --pid @PID@
    run "$t" memory "memory per queued message" fill -n "$filln" --pid @PID@
done

echo "== Python: ferry.JoinableQueue against multiprocessing.JoinableQueue" >&2
if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import ferry' 2>/dev/null; then
    FERRY_BIN="$ferry_bin" .venv/bin/python bench/python_mp.py -n "$pyn" --json >>"$results" || failed=1
    echo "== Python: ferry.Pool and ProcessPoolExecutor against multiprocessing's and concurrent.futures'" >&2
    pool_quick=(); ((quick)) && pool_quick=(--quick)
    FERRY_BIN="$ferry_bin" .venv/bin/python bench/python_pool.py "${pool_quick[@]}" --json >>"$results" || failed=1
    echo "== Python asyncio: ferry.aio against redis.asyncio streams, asyncio.Queue as the ceiling" >&2
    for loop in "" --uvloop; do
        FERRY_BIN="$ferry_bin" .venv/bin/python bench/python_aio.py -n "$pyaio" $loop --json >>"$results" || failed=1
    done
else
    echo "  skipped: build the package first (scripts/test.sh does)" >&2
    failed=1
fi

versions="$work/versions.json"
python3 - "$versions" "$ferry_bin" <<'EOF'
import json, platform, subprocess, sys
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception as e:
        return f"unknown ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem = next((l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), "unknown")
import os
json.dump({
    "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
    "ferry": out(sys.argv[2], "--version"), "redis": out("redis-server", "--version"),
    "beanstalkd": out("beanstalkd", "-v"), "nats": out("nats-server", "--version"),
    "python": platform.python_version(),
}, open(sys.argv[1], "w"), indent=1)
EOF

report_python=python3
[[ -x .venv/bin/python ]] && report_python=.venv/bin/python
"$report_python" bench/report.py --results "$results" --versions "$versions" --md "$md" --charts "$charts" \
    --command "bench/run.sh${1:+ $1}"
cp "$results" "$charts/results.jsonl"; cp "$versions" "$charts/versions.json"
exit $failed
