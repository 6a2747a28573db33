#!/usr/bin/env python3
"""How long a client waits while the log is compacted, against Redis
rewriting its AOF, in one run. One connection fills queues (QPUTMANY /
RPUSH of 16-byte items, 100 per call) while another sends PING in a loop;
compaction is set to start at 16 MB of log (ferry --checkpoint-bytes,
Redis auto-aof-rewrite-min-size) so that it runs a few times. Prints the
PING latencies (p50, p99.9, max) and how many pings took over 10 ms, for
one queue holding the whole backlog and for 10,000 queues.

    .venv/bin/python bench/checkpoint_stall.py            # 3,000,000 items
    .venv/bin/python bench/checkpoint_stall.py --quick    # 300,000

Needs the release binary (`cargo build --release -p ferry-cli`) and
redis-server; both listen on free loopback ports and are stopped after.
"""

import argparse
import os
import pathlib
import socket
import subprocess
import tempfile
import threading
import time

import redis

ITEM = b"0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(port, put, calls, queues):
    """Fills `queues` queues with `calls` calls of 100 items while a second
    connection pings; replies the sorted ping latencies (s)."""
    stop = threading.Event()
    lat = []

    def pinger():
        r = redis.Redis(port=port)
        while not stop.is_set():
            t = time.perf_counter()
            r.ping()
            lat.append(time.perf_counter() - t)

    th = threading.Thread(target=pinger)
    th.start()
    r = redis.Redis(port=port)
    batch = [ITEM] * 100
    deadline = time.monotonic() + 300
    try:
        for i in range(calls):
            put(r, f"q{i % queues}", batch)
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        th.join()
    return sorted(lat)


def ferry_put(r, q, batch):
    r.execute_command("QPUTMANY", q, "PAYLOADS", *batch)


def redis_put(r, q, batch):
    r.rpush(q, *batch)


def start(argv, port):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            redis.Redis(port=port).ping()
            return p
        except redis.ConnectionError:
            time.sleep(0.01)
    p.kill()
    raise SystemExit(f"{argv[0]} did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    calls = 3_000 if args.quick else 30_000
    root = pathlib.Path(__file__).resolve().parents[1]
    binary = pathlib.Path(os.environ.get("FERRY_BIN") or root / "target" / "release" / "ferry")
    print(f"{calls * 100} items of 16 B, 100 per call; compaction from 16 MB of log; PING latency")
    print(f"{'server':<8} {'queues':>7} {'p50 µs':>8} {'p99.9 ms':>9} {'max ms':>8} {'>10 ms':>7}")
    for queues in (1, 10_000):
        for name in ("ferry", "redis"):
            with tempfile.TemporaryDirectory() as d:
                port = free_port()
                if name == "ferry":
                    argv = [str(binary), "serve", "--bind", "127.0.0.1", "--port", str(port), "--http", "off",
                            "--data-dir", d, "--checkpoint-bytes", "16mb"]
                    put = ferry_put
                else:
                    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", d, "--save", "",
                            "--appendonly", "yes", "--appendfsync", "everysec",
                            "--auto-aof-rewrite-min-size", "16mb", "--auto-aof-rewrite-percentage", "100"]
                    put = redis_put
                p = start(argv, port)
                try:
                    lat = measure(port, put, calls, queues)
                finally:
                    p.terminate()
                    p.wait()
            over = sum(1 for x in lat if x > 0.01)
            print(f"{name:<8} {queues:>7} {lat[len(lat) // 2] * 1e6:>8.0f} "
                  f"{lat[int(len(lat) * 0.999)] * 1e3:>9.1f} {lat[-1] * 1e3:>8.1f} {over:>7}")


if __name__ == "__main__":
    main()
