#!/usr/bin/env bash
# What the HTTP admin port's /metrics costs (issue: a scrape of 10,000
# queues answers well under a second, and the broker's put throughput
# while Prometheus scrapes every second stays within 5 %).
#
# One broker, release build, at the defaults a user gets (async
# durability, the HTTP port on), data on disk under target/bench-data:
#   1. 10,000 queues of one message each (redis-cli --pipe);
#   2. five scrapes of /metrics with curl: time and size, and the median;
#   3. crates/ferry-loadgen's throughput workload (2 producers, 2 consumers,
#      16-byte messages, batch 1) without scraping and with a scraper
#      reading /metrics every second, alternated, `rounds` times each;
#      the medians and their ratio (above 0.95: the goal is met).
#
#   bench/metrics.sh            the full run (~2 min)
#   bench/metrics.sh --quick    500 queues and a short load, to keep it working
#
# Listens on 127.0.0.1 only; the scraper is bounded in count and stopped
# with the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap stop_all EXIT

queues=10000 n=400000 rounds=3 profile=release
if [[ "${1:-}" == "--quick" ]]; then
    queues=500 n=20000 rounds=1 profile=debug
fi
for tool in redis-cli curl; do
    command -v "$tool" >/dev/null || { echo "bench/metrics.sh needs $tool" >&2; exit 1; }
done
if [[ $profile == release ]]; then
    cargo build --release -q -p ferry-cli -p ferry-loadgen
else
    cargo build -q -p ferry-cli -p ferry-loadgen
fi
ferry=target/$profile/ferry loadgen=target/$profile/loadgen
mkdir -p target/bench-data
work=$(mktemp -d target/bench-data/metrics.XXXXXX)
port=$(free_port) http_port=$(free_port)
"$ferry" serve --port "$port" --http "127.0.0.1:$http_port" --data-dir "$work/data" >"$work/out" 2>"$work/err" &
pids+=($!)
wait_port "$port"
url=http://127.0.0.1:$http_port/metrics

python3 -c '
import sys
for i in range(int(sys.argv[1])):
    name = b"q%05d" % i
    sys.stdout.buffer.write(b"*3\r\n$4\r\nQPUT\r\n$%d\r\n%s\r\n$1\r\nx\r\n" % (len(name), name))
' "$queues" | redis-cli -p "$port" --pipe >/dev/null

echo "== /metrics with $queues queues (curl: seconds, bytes)"
times=()
for _ in 1 2 3 4 5; do
    read -r t size < <(curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$url")
    echo "  $t s, $size bytes"
    times+=("$t")
done
scrape_median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
echo "  median $scrape_median s"

throughput() {
    "$loadgen" --target ferry --addr "127.0.0.1:$port" --label ferry --name metrics \
        --timeout-s 300 throughput -n "$n" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["value"])'
}
echo "== throughput (msgs/s), $n messages per run, alone and under a scrape every second"
alone=() scraped=()
for r in $(seq "$rounds"); do
    alone+=("$(throughput)")
    (for _ in $(seq 600); do curl -s -o /dev/null "$url"; sleep 1; done) &
    scraper=$!
    scraped+=("$(throughput)")
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
    echo "  round $r: alone ${alone[-1]}, scraped ${scraped[-1]}"
done
python3 - "$scrape_median" "${#alone[@]}" "${alone[@]}" "${scraped[@]}" <<'PY'
import statistics, sys
scrape, k = float(sys.argv[1]), int(sys.argv[2])
vals = [float(v) for v in sys.argv[3:]]
alone, scraped = statistics.median(vals[:k]), statistics.median(vals[k:])
print(f"scrape median {scrape * 1000:.1f} ms; throughput alone {alone:,.0f}, "
      f"scraped every second {scraped:,.0f}: ratio {scraped / alone:.3f} (goal >= 0.95)")
PY
stop_all
rm -rf "$work"
