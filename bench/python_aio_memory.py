#!/usr/bin/env python3
"""What a waiting coroutine costs with ferry.aio, against asyncio.Queue's
waiting get, in one run: the process's resident memory (and open file
descriptors) before and after N coroutines start waiting.

- N gets on an empty ferry.aio.Queue: they wait in the handle's line,
  served by one broker wait (no connection each).
- M puts on a full ferry.aio.Queue: each waits at the broker on a
  connection of its own.
- N gets on an empty asyncio.Queue: the floor (a task and a future).

    .venv/bin/python bench/python_aio_memory.py [-n 10000] [-m 500]
"""

import argparse
import asyncio
import os
import pathlib
import subprocess
import tempfile

import ferry
import ferry.aio


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(cond):
    for _ in range(60_000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise SystemExit("timed out")


async def measure(url: str, n: int, m: int) -> None:
    conn = ferry.connect(url)
    # Warm up: the pool, its runtime and a connection of each kind exist.
    warm = ferry.aio.Queue(maxsize=1, url=url)
    await warm.put(0)
    t = asyncio.ensure_future(warm.put(1))
    await until(lambda: dict(conn.info(warm.name))["waiting_putters"] == 1)
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)

    full = ferry.aio.Queue(maxsize=1, url=url)
    full.put_nowait(0)
    r0, f0 = rss(), fds()
    puts = [asyncio.ensure_future(full.put(1)) for _ in range(m)]
    await until(lambda: dict(conn.info(full.name))["waiting_putters"] == m)
    r1, f1 = rss(), fds()
    print(f"ferry.aio waiting put: {(r1 - r0) / m:8.0f} B and {(f1 - f0) / m:.2f} connections each ({m} waiting)")
    for p in puts:
        p.cancel()
    await asyncio.gather(*puts, return_exceptions=True)

    empty = ferry.aio.Queue(url=url)
    r0, f0 = rss(), fds()
    gets = [asyncio.ensure_future(empty.get()) for _ in range(n)]
    await until(lambda: len(empty._getters) == n)
    r1, f1 = rss(), fds()
    print(f"ferry.aio waiting get: {(r1 - r0) / n:8.0f} B and {(f1 - f0) / n:.2f} connections each ({n} waiting)")
    for g in gets:
        g.cancel()
    await asyncio.gather(*gets, return_exceptions=True)
    for q in (warm, full, empty):
        q.drop()


async def measure_asyncio(n: int) -> None:
    q = asyncio.Queue()
    r0 = rss()
    gets = [asyncio.ensure_future(q.get()) for _ in range(n)]
    await until(lambda: len(q._getters) == n)
    print(f"asyncio.Queue waiting get: {(rss() - r0) / n:4.0f} B each ({n} waiting)")
    for g in gets:
        g.cancel()
    await asyncio.gather(*gets, return_exceptions=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10_000, help="waiting gets")
    ap.add_argument("-m", type=int, default=500, help="waiting puts")
    args = ap.parse_args()
    root = pathlib.Path(__file__).resolve().parents[1]
    binary = pathlib.Path(os.environ.get("FERRY_BIN") or root / "target" / "release" / "ferry")
    with tempfile.TemporaryDirectory() as data:
        broker = subprocess.Popen(
            [str(binary), "serve", "--port", "0", "--durability", "memory", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = "ferry://" + broker.stdout.readline().split()[1]
            # asyncio's first: the same process's allocator then serves both.
            asyncio.run(measure_asyncio(args.n))
            asyncio.run(measure(url, args.n, args.m))
        finally:
            broker.terminate()
            broker.wait()
            broker.stdout.close()


if __name__ == "__main__":
    main()
