#!/usr/bin/env bash
# Two ferry binaries under `ferry bench`, alternating, to weigh a change
# to the allocator or to how freed memory goes back (crates/ferry-cli/src/
# trim.rs) on the same noisy machine:
#
#   bench/allocator.sh OLD_FERRY NEW_FERRY [ROUNDS]
#
# Per binary and round: full speed (16 B), paced 20,000 msg/s (16 B) and
# 8,000 msg/s (16 KiB) with put->get latency, and paced 15,000 msg/s
# beside bursts of 100 MiB put and drained (what makes an allocator keep
# or return memory), with the broker's resident size at the end. Async
# durability, the default. Servers listen on 127.0.0.1 only and are
# stopped at the end. Figures: docs/performance.md, "Build time".
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap stop_all EXIT
(($# >= 2)) || { echo "usage: bench/allocator.sh OLD_FERRY NEW_FERRY [ROUNDS]" >&2; exit 2; }
rounds=${3:-3}
summary() { grep -E "^(throughput|latency)" | sed -E 's/ \(put -> get.*//; s/ \([0-9]+ samples\)//' | tr '\n' ' '; }
for round in $(seq "$rounds"); do
    for bin in "$1" "$2"; do
        dir=$(mktemp -d)
        "$bin" serve --port 0 --http off --data-dir "$dir/data" >"$dir/out" 2>/dev/null &
        pid=$!
        pids+=("$pid")
        for _ in $(seq 500); do [[ -s "$dir/out" ]] && break; sleep 0.01; done
        url=ferry://127.0.0.1:$(head -1 "$dir/out" | sed 's/.*://')
        echo "round $round $bin"
        echo "  full 16 B:        $("$bin" bench --url "$url" -p 2 -c 2 -n 200000 | summary)"
        echo "  20,000/s 16 B:    $("$bin" bench --url "$url" -p 2 -c 2 -n 200000 --rate 20000 | summary)"
        echo "  8,000/s 16 KiB:   $("$bin" bench --url "$url" -p 2 -c 2 -n 80000 -s 16384 --rate 8000 | summary)"
        (for _ in $(seq 30); do "$bin" bench --url "$url" -n 400 -s 262144 -b 50 >/dev/null; done) &
        bursts=$!
        echo "  15,000/s + bursts: $("$bin" bench --url "$url" -p 2 -c 2 -n 150000 --rate 15000 | summary)"
        wait "$bursts"
        echo "  resident at the end: $(($(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024)) MiB"
        stop_all
        rm -rf "$dir"
    done
done
