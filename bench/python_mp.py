#!/usr/bin/env python3
"""ferry.JoinableQueue against multiprocessing.JoinableQueue, in one run:
1 producer process and 2 consumer processes move N 16-byte items through
put / get / task_done, and the main process joins. Prints items per second
and the ferry/multiprocessing ratio: per item with the defaults (written
behind puts, adaptive prefetch), per item with every call a round trip
(prefetch=0, write_behind=0), per item with fixed windows (prefetch=100,
write_behind=100, task_done riding on gets), and with put_many / get_many /
task_done_many in batches of 100 (then with write_behind, so that each
batch's task_done travels with the next get_many).
multiprocessing has no batch calls: every row compares with its per-item
figure, measured again in each row.

    .venv/bin/python bench/python_mp.py            # 1,000,000 items
    .venv/bin/python bench/python_mp.py --quick    # 10,000

Needs the package built in release mode (`maturin develop --release`, as
bench/run.sh does: a debug build is several times slower) and
the release binary (`cargo build --release -p ferry-cli`); the broker runs
on a free loopback port in memory mode, as multiprocessing keeps its queue
in memory.
"""

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import ferry

ITEM = b"0123456789abcdef"


def produce(q, n, batch):
    if batch > 1:
        for start in range(0, n, batch):
            q.put_many([ITEM] * min(batch, n - start))
    else:
        for _ in range(n):
            q.put(ITEM)


def consume(q, batch):
    while True:
        if batch > 1 and hasattr(q, "get_many"):
            items = q.get_many(batch)
            q.task_done_many(len(items))
        else:
            items = [q.get()]
            q.task_done()
        if None in items:
            # One sentinel is this consumer's; put back the others it got
            # in the same batch, give back what it fetched ahead, and stop.
            for _ in range(items.count(None) - 1):
                q.put(None)
            q.close()
            return


def run(make_queue, n, batch):
    q = make_queue()
    ctx = mp.get_context("fork")
    consumers = [ctx.Process(target=consume, args=(q, batch)) for _ in range(2)]
    for c in consumers:
        c.start()
    t = time.perf_counter()
    p = ctx.Process(target=produce, args=(q, n, batch))
    p.start()
    p.join()
    q.join()
    elapsed = time.perf_counter() - t
    for _ in consumers:
        q.put(None)
    for c in consumers:
        c.join()
    return n / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="one JSON line per measurement (for bench/run.sh)")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.n
    root = pathlib.Path(__file__).resolve().parents[1]
    binary = pathlib.Path(os.environ.get("FERRY_BIN") or root / "target" / "release" / "ferry")
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferry-cli"], cwd=root, check=True)
    with tempfile.TemporaryDirectory() as data:
        broker = subprocess.Popen(
            [str(binary), "serve", "--port", "0", "--durability", "memory", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            url = "ferry://" + broker.stdout.readline().split()[1]
            os.environ["FERRY_URL"] = url
            if not args.json:
                print(f"{n} items of 16 B, 1 producer, 2 consumers; Python {sys.version.split()[0]}")
                print(f"{'mode':<34} {'ferry items/s':>14} {'mp items/s':>12} {'ratio':>7}")
            rows = (
                ("per item", 1, {}),
                ("per item, every call a round trip", 1, {"prefetch": 0, "write_behind": 0}),
                ("per item, prefetch + write-behind", 1, {"prefetch": 100, "write_behind": 100}),
                ("batches of 100", 100, {}),
                ("batches of 100, write-behind", 100, {"write_behind": 100}),
                ("batches of 1000", 1000, {}),
            )
            for label, batch, options in rows:
                f = run(lambda: ferry.JoinableQueue(**options), n, batch)
                m = run(lambda: mp.JoinableQueue(), n, 1)
                if args.json:
                    for who, value in (("ferry memory", f), ("multiprocessing memory", m)):
                        print(json.dumps({"workload": f"python: {label}", "label": who,
                                          "value": value, "unit": "msg/s"}), flush=True)
                else:
                    print(f"{label:<34} {f:>14.0f} {m:>12.0f} {f / m:>7.2f}")
        finally:
            broker.terminate()
            broker.wait()
            broker.stdout.close()


if __name__ == "__main__":
    main()
