#!/usr/bin/env python3
"""ferry.Pool and ProcessPoolExecutor against multiprocessing's, in one
run, and the round trips of a semaphore:

- Pool(4).map(f, range(N)) of a trivial f, default chunksize: items per
  second, ferry against multiprocessing.Pool(4) (each pool started and
  warmed up before it is timed);
- ProcessPoolExecutor(4): submit(f).result() one after another, the
  round trip's p50, ferry against concurrent.futures';
- Semaphore: acquire/release pairs per second, and the broker's commands
  per pair (INFO total_commands_processed): the round trips it costs.

    .venv/bin/python bench/python_pool.py            # N = 100,000
    .venv/bin/python bench/python_pool.py --quick    # N = 10,000

Needs the package built in release mode and the release binary, as
bench/python_mp.py; the broker runs on a free loopback port in memory
mode (multiprocessing keeps its queues in memory).
"""

import argparse
import concurrent.futures
import json
import multiprocessing as mp
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import ferry


def f(x):
    return x


def timed_map(pool, n: int) -> float:
    pool.map(f, range(1000))  # warm: workers started and importing done
    t = time.perf_counter()
    out = pool.map(f, range(n))
    elapsed = time.perf_counter() - t
    assert len(out) == n and out[-1] == n - 1
    return n / elapsed


def round_trip_p50(ex, k: int) -> float:
    for _ in range(20):
        ex.submit(f, 0).result()
    samples = []
    for i in range(k):
        t = time.perf_counter()
        assert ex.submit(f, i).result() == i
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def commands(conn) -> int:
    for line in conn.call([b"INFO"]).decode().splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    raise KeyError("total_commands_processed")


def semaphore_pairs(k: int) -> tuple:
    sem = ferry.Semaphore(4)
    sem.acquire()
    sem.release()
    conn = ferry.connect()
    before = commands(conn)
    t = time.perf_counter()
    for _ in range(k):
        sem.acquire()
        sem.release()
    elapsed = time.perf_counter() - t
    # INFO itself is one command.
    per_pair = (commands(conn) - before - 1) / k
    return k / elapsed, per_pair


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="one JSON line per measurement (for bench/run.sh)")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.n
    k = 200 if args.quick else 2000
    root = pathlib.Path(__file__).resolve().parents[1]
    binary = pathlib.Path(os.environ.get("FERRY_BIN") or root / "target" / "release" / "ferry")
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferry-cli"], cwd=root, check=True)
    with tempfile.TemporaryDirectory() as data:
        broker = subprocess.Popen(
            [str(binary), "serve", "--port", "0", "--http", "off", "--durability", "memory", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            os.environ["FERRY_URL"] = "ferry://" + broker.stdout.readline().split()[1]
            with ferry.Pool(4) as p:
                fm = timed_map(p, n)
            with mp.Pool(4) as p:
                mm = timed_map(p, n)
            with ferry.ProcessPoolExecutor(4) as ex:
                fr = round_trip_p50(ex, k)
            with concurrent.futures.ProcessPoolExecutor(4) as ex:
                mr = round_trip_p50(ex, k)
            pairs, per_pair = semaphore_pairs(k)
            rows = (
                (f"python: Pool(4).map of {n:,}", "msg/s", fm, mm, "multiprocessing memory"),
                ("python: ProcessPoolExecutor round trip p50", "ms", fr * 1e3, mr * 1e3,
                 "concurrent.futures memory"),
            )
            if args.json:
                for workload, unit, fv, mv, peer in rows:
                    for who, value in (("ferry memory", fv), (peer, mv)):
                        print(json.dumps({"workload": workload, "label": who, "value": value, "unit": unit}),
                              flush=True)
                print(json.dumps({"workload": "python: Semaphore acquire+release", "label": "ferry memory",
                                  "value": pairs, "unit": "msg/s"}), flush=True)
            else:
                print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
                print(f"Pool(4).map of {n:,} (default chunksize): ferry {fm:,.0f} items/s, "
                      f"multiprocessing {mm:,.0f} items/s, ratio {fm / mm:.2f}")
                print(f"ProcessPoolExecutor(4) submit->result p50: ferry {fr * 1e3:.3f} ms, "
                      f"concurrent.futures {mr * 1e3:.3f} ms, ratio {fr / mr:.2f}")
                print(f"Semaphore acquire+release: {pairs:,.0f} pairs/s, {per_pair:.2f} broker commands per pair")
        finally:
            broker.terminate()
            broker.wait()
            broker.stdout.close()


if __name__ == "__main__":
    main()
