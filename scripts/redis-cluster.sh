#!/usr/bin/env bash
# A Redis Cluster of 3 primaries and 3 replicas on free loopback ports,
# from Debian's redis-server, for the tests and benchmarks.
#
#   scripts/redis-cluster.sh start DIR [PORT]   # prints the redis+cluster:// URL
#   scripts/redis-cluster.sh stop DIR           # stops every node by PID
#
# DIR holds each node's directory, log and PID file; `start` waits until
# every slot is served and every replica is in sync. Without PORT the
# nodes take free ports; with it, PORT to PORT+5 (their cluster buses
# 10000 above, as Redis has them), refused if one is taken.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?a directory}
first=${3:-}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

taken() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null && return 1
    return 0
}

case "$cmd" in
start)
    mkdir -p "$dir"
    nodes=()
    if [ -n "$first" ]; then
        for i in 0 1 2 3 4 5; do
            for p in $((first + i)) $((first + i + 10000)); do
                if taken "$p"; then echo "redis-cluster.sh: port $p is in use; pick another PORT" >&2; exit 1; fi
            done
        done
    fi
    for i in 0 1 2 3 4 5; do
        if [ -n "$first" ]; then
            port=$((first + i)) bus=$((first + i + 10000))
        else
            port=$(free_port) bus=$(free_port)
        fi
        mkdir -p "$dir/$port"
        redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-port "$bus" \
            --cluster-node-timeout 2000 --repl-diskless-sync-delay 0 \
            --save '' --appendonly no --dir "$dir/$port" \
            --daemonize yes --pidfile "$dir/$port/pid" --logfile "$dir/$port/log"
        nodes+=("127.0.0.1:$port")
    done
    for n in "${nodes[@]}"; do
        for _ in $(seq 500); do redis-cli -p "${n#*:}" ping >/dev/null 2>&1 && break; sleep 0.01; done
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log"
    for n in "${nodes[@]}"; do
        for _ in $(seq 3000); do
            info=$(redis-cli -p "${n#*:}" cluster info)
            repl=$(redis-cli -p "${n#*:}" info replication)
            if grep -q cluster_state:ok <<<"$info" && grep -q cluster_slots_ok:16384 <<<"$info" \
                && grep -Eq 'role:master|master_link_status:up' <<<"$repl"; then
                break
            fi
            sleep 0.02
        done
    done
    echo "redis+cluster://${nodes[0]},${nodes[1]},${nodes[2]}"
    ;;
stop)
    pids=()
    for pidfile in "$dir"/*/pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && pids+=("$pid")
    done
    # Until they are gone (at most 10 s): a node still writing its last
    # log lines would race the caller's removal of DIR.
    for pid in "${pids[@]}"; do
        for _ in $(seq 1000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
    done
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
