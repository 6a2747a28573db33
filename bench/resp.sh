#!/usr/bin/env bash
# ferry against redis-server under redis-benchmark, in one run, at equal
# durability: QPUT / QGET NOWAIT NOACK against LPUSH / RPOP, 16-byte
# payloads, 50 clients, with no pipelining and with 16 commands in flight.
#
#   memory   ferry --durability memory   vs  redis, persistence off
#            (and PING_MBULK on both: the protocol's ceiling)
#   sync     ferry --durability sync     vs  redis appendonly yes, appendfsync always
#   async    ferry --durability async    vs  redis appendonly yes, appendfsync everysec
#
# Then, with 1,000,000 16-byte messages queued: server memory per message
# (RSS growth, memory mode), disk bytes per message (sync: log vs AOF), and
# recovery time (restart until the server answers).
#
# Each row runs twice on each server (ferry, redis, redis, ferry) and
# prints the means, as ferry/redis ratios: above 1.0, ferry is faster (or,
# for memory and disk, uses less — those ratios are redis/ferry). For sync
# and async it also prints ferry's fsyncs per second and replies per fsync.
#
#   bench/resp.sh            full run (several minutes)
#   bench/resp.sh --quick    a smoke test with few requests
#
# Servers listen on 127.0.0.1 only, keep their data under target/bench-data
# (on disk, not tmpfs), and are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

n=400000
n_sync=60000
queued=1000000
if [[ "${1:-}" == "--quick" ]]; then
    n=5000
    n_sync=2000
    queued=20000
fi
clients=50
payload=0123456789abcdef

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "bench/resp.sh needs $tool (Debian: redis-server, redis-tools)" >&2; exit 1; }
done
cargo build --release -q -p ferry-cli
work="$PWD/target/bench-data/$$"
rm -rf "$work"; mkdir -p "$work"
source bench/lib.sh
trap 'stop_all; rm -rf "$work"' EXIT


# start_ferry DURABILITY DIR: sets ferry_pid, ferry_port
start_ferry() {
    local out="$work/ferry.$RANDOM.out"
    ./target/release/ferry serve --port 0 --durability "$1" --data-dir "$2" >"$out" 2>>"$work/ferry.err" &
    ferry_pid=$!
    pids+=("$ferry_pid")
    for _ in $(seq 600); do [[ -s "$out" ]] && break; sleep 0.01; done
    ferry_port=$(head -1 "$out" | sed 's/.*://')
}

# start_redis DIR ARGS...: sets redis_pid, redis_port
start_redis() {
    local dir=$1; shift
    mkdir -p "$dir"
    redis_port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir" --save '' "$@" --daemonize no >>"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 600); do
        [[ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" == PONG ]] && break
        sleep 0.01
    done
}

# requests per second of one redis-benchmark run
rps() {
    local port=$1 pipeline=$2 requests=$3; shift 3
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -n "$requests" -P "$pipeline" -q "$@" 2>/dev/null \
        | tr '\r' '\n' | grep 'requests per second' | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/'
}

syncs() { redis-cli -p "$1" INFO | tr -d '\r' | awk -F: '/^log_syncs:/ {print $2}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time a process used so far (user + system), in clock ticks
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "ferry $(./target/release/ferry --version | awk '{print $2}'), $(redis-server --version | awk '{print $1, $2, $3}'); $clients clients, 16-byte payloads" >&2
# cpu µs/req: the server's CPU time (user + system, all its threads) per
# request — steadier than requests/s on a shared machine, where the
# benchmark client competes for the same cores.
echo "(cpu µs/req: server CPU time per request, ferry / redis)" >&2
echo "(client cpu: redis-benchmark's CPU time over its run time, against ferry / redis; near 1.00 the client's one thread is the bound)" >&2
printf '%-34s %12s %12s %7s %14s %10s %13s %14s\n' workload "ferry ops/s" "redis ops/s" ratio "cpu µs/req" "fsyncs/s" "replies/fsync" "client cpu"

# one PORT PID PIPELINE REQUESTS CMD...: "ops/s cpu-ticks syncs seconds
# client-cpu-share" of one run (the share: redis-benchmark's own CPU time
# over its run time; near 1.0, its one thread is the bound, not the server)
one() {
    local port=$1 pid=$2 pl=$3 req=$4; shift 4
    local c0 c1 s0 s1 t0 t1 r client
    s0=$(syncs "$port"); c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
    local TIMEFORMAT='%U %S %R'
    r=$( { time rps "$port" "$pl" "$req" "$@" 2>/dev/null; } 2>"$work/time")
    t1=$(date +%s.%N); c1=$(cpu_ticks "$pid"); s1=$(syncs "$port")
    client=$(awk '{printf "%.2f", ($1 + $2) / $3}' "$work/time")
    echo "$r $((c1 - c0)) $(( ${s1:-0} - ${s0:-0} )) $(python3 -c "print($t1-$t0)") $client"
}

# Each server runs each row twice, in the order ferry, redis, redis, ferry,
# so that drift on this shared machine falls on both alike; the figures are
# the means of the two runs.
row() { # label ferry_port redis_port pipeline requests ferry_cmd... -- redis_cmd...
    local label=$1 fp=$2 rp=$3 pl=$4 req=$5; shift 5
    local fcmd=() rcmd=()
    while [[ $1 != -- ]]; do fcmd+=("$1"); shift; done; shift
    rcmd=("$@")
    local f1 r1 r2 f2
    f1=$(one "$fp" "$ferry_pid" "$pl" "$req" "${fcmd[@]}")
    r1=$(one "$rp" "$redis_pid" "$pl" "$req" "${rcmd[@]}")
    r2=$(one "$rp" "$redis_pid" "$pl" "$req" "${rcmd[@]}")
    f2=$(one "$fp" "$ferry_pid" "$pl" "$req" "${fcmd[@]}")
    python3 - "$label" "$req" "$(getconf CLK_TCK)" "$f1" "$f2" "$r1" "$r2" <<'PY'
import sys
label, req, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = [list(map(float, a.split())) for a in sys.argv[4:6]]
r = [list(map(float, a.split())) for a in sys.argv[6:8]]
fo, ro = sum(x[0] for x in f) / 2, sum(x[0] for x in r) / 2
cpu = lambda runs: sum(x[1] for x in runs) * 1e6 / tick / (2 * req)
syncs, secs = sum(x[2] for x in f), sum(x[3] for x in f)
per_s = f"{syncs / secs:.0f}" if syncs > 0 else "-"
per = f"{2 * req / syncs:.1f}" if syncs > 0 else "-"
client = lambda runs: sum(x[4] for x in runs) / 2
print(f"{label:<34} {fo:12.0f} {ro:12.0f} {fo / ro:7.2f} {cpu(f):6.2f} / {cpu(r):<5.2f} {per_s:>10} {per:>13} {client(f):6.2f} / {client(r):.2f}")
PY
}

# --- memory -----------------------------------------------------------------
start_ferry memory "$work/f-mem"; start_redis "$work/r-mem" --appendonly no
for pl in 1 16; do
    # The protocol's ceiling: no queue work at all.
    row "memory PING_MBULK -P $pl" "$ferry_port" "$redis_port" "$pl" "$n" PING -- PING
    row "memory put -P $pl" "$ferry_port" "$redis_port" "$pl" "$n" QPUT q "$payload" -- LPUSH q "$payload"
    row "memory get -P $pl" "$ferry_port" "$redis_port" "$pl" "$n" QGET q NOWAIT NOACK -- RPOP q
done
stop_all

# --- sync and async ---------------------------------------------------------
for mode in sync async; do
    fsync=always; [[ $mode == async ]] && fsync=everysec
    start_ferry "$mode" "$work/f-$mode"; start_redis "$work/r-$mode" --appendonly yes --appendfsync "$fsync"
    req=$n; [[ $mode == sync ]] && req=$n_sync
    for pl in 1 16; do
        row "$mode put -P $pl (redis $fsync)" "$ferry_port" "$redis_port" "$pl" "$req" QPUT q "$payload" -- LPUSH q "$payload"
        row "$mode get -P $pl (redis $fsync)" "$ferry_port" "$redis_port" "$pl" "$req" QGET q NOWAIT NOACK -- RPOP q
    done
    stop_all
done

# --- a million queued ---------------------------------------------------------
start_ferry memory "$work/f-mem2"; start_redis "$work/r-mem2" --appendonly no
f0=$(rss_kb "$ferry_pid"); r0=$(rss_kb "$redis_pid")
rps "$ferry_port" 64 "$queued" QPUT mem "$payload" >/dev/null
rps "$redis_port" 64 "$queued" LPUSH mem "$payload" >/dev/null
fq=$(redis-cli -p "$ferry_port" QLEN mem); rq=$(redis-cli -p "$redis_port" LLEN mem)
fb=$(python3 -c "print(($(rss_kb "$ferry_pid")-$f0)*1024/$fq)"); rb=$(python3 -c "print(($(rss_kb "$redis_pid")-$r0)*1024/$rq)")
stop_all
printf '%-34s %12.1f %12.1f %7s\n' "memory bytes/queued msg" "$fb" "$rb" "$(ratio "$rb" "$fb")"

start_ferry sync "$work/f-disk"; start_redis "$work/r-disk" --appendonly yes --appendfsync always
rps "$ferry_port" 64 "$queued" QPUT disk "$payload" >/dev/null
rps "$redis_port" 64 "$queued" LPUSH disk "$payload" >/dev/null
fq=$(redis-cli -p "$ferry_port" QLEN disk); rq=$(redis-cli -p "$redis_port" LLEN disk)
# While running, ferry's open segment is preallocated (up to 64 MiB of
# reserved zeros); a clean stop cuts it to its data.
fd_live=$(du -sb "$work/f-disk" | cut -f1); rd_live=$(du -sb "$work/r-disk" | cut -f1)
stop_all
fd=$(du -sb "$work/f-disk" | cut -f1); rd=$(du -sb "$work/r-disk" | cut -f1)
fper=$(python3 -c "print($fd/$fq)"); rper=$(python3 -c "print($rd/$rq)")
printf '%-34s %12.1f %12.1f %7s\n' "disk bytes/queued msg (sync)" "$fper" "$rper" "$(ratio "$rper" "$fper")"
fper=$(python3 -c "print($fd_live/$fq)"); rper=$(python3 -c "print($rd_live/$rq)")
printf '%-34s %12.1f %12.1f %7s\n' "  same, running (preallocated)" "$fper" "$rper" "$(ratio "$rper" "$fper")"

t0=$(date +%s.%N); start_ferry sync "$work/f-disk"; t1=$(date +%s.%N)
fl=$(redis-cli -p "$ferry_port" QLEN disk)
t2=$(date +%s.%N); start_redis "$work/r-disk" --appendonly yes --appendfsync always; t3=$(date +%s.%N)
for _ in $(seq 600); do [[ "$(redis-cli -p "$redis_port" LLEN disk 2>/dev/null)" =~ ^[0-9]+$ ]] && break; sleep 0.01; done
rl=$(redis-cli -p "$redis_port" LLEN disk)
stop_all
fr=$(python3 -c "print($t1-$t0)"); rr=$(python3 -c "print($t3-$t2)")
printf '%-34s %12.2f %12.2f %7s\n' "recovery seconds ($fl / $rl msgs)" "$fr" "$rr" "$(ratio "$rr" "$fr")"
