#!/usr/bin/env python3
"""ferry.aio against redis.asyncio with Redis Streams, and asyncio.Queue
inside one process as the ceiling, in one run.

Shape (the same for each): 1 producer process and 2 consumer processes,
each running 50 coroutines; N items of 16 bytes; each consumer coroutine
gets an item and finishes it (task_done / XACK) before the next. The
clock runs from the producer's start until every consumer coroutine has
finished its last item (each stops on a sentinel put after the items).

- ferry.aio.JoinableQueue: leased gets, task_done per item.
- redis.asyncio, Streams: XADD; XREADGROUP COUNT 1 BLOCK (each waiting
  coroutine on a connection of its own, as redis-py's pool does); XACK.
- asyncio.Queue: producer and 100 consumer coroutines in one process, no
  network: what the event loop itself can do.

    .venv/bin/python bench/python_aio.py            # 200,000 items
    .venv/bin/python bench/python_aio.py --quick    # 5,000
    .venv/bin/python bench/python_aio.py --uvloop   # every row on uvloop

Needs redis-server and the redis package; the brokers run on free
loopback ports in memory mode (Redis without persistence).
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ITEM = b"0123456789abcdef"
COROUTINES = 50
CONSUMERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_loop(coro, use_uvloop: bool):
    if use_uvloop:
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


# ferry.aio

def ferry_produce(url, name, n, use_uvloop):
    import ferry.aio

    async def main():
        q = ferry.aio.JoinableQueue(name=name, url=url)

        async def put(k):
            for _ in range(k):
                await q.put(ITEM)
        await asyncio.gather(*(put(n // COROUTINES + (i < n % COROUTINES)) for i in range(COROUTINES)))
        for _ in range(CONSUMERS * COROUTINES):
            await q.put(None)
    run_loop(main(), use_uvloop)


def ferry_consume(url, name, use_uvloop):
    import ferry.aio

    async def main():
        q = ferry.aio.JoinableQueue(name=name, url=url)

        async def work():
            while True:
                item = await q.get()
                q.task_done()
                if item is None:
                    return
        await asyncio.gather(*(work() for _ in range(COROUTINES)))
        await q.aclose()
    run_loop(main(), use_uvloop)


# redis.asyncio, Streams

def redis_produce(port, n, use_uvloop):
    import redis.asyncio as redis

    async def main():
        r = redis.Redis(port=port)

        async def put(k):
            for _ in range(k):
                await r.xadd("jobs", {"d": ITEM})
        await asyncio.gather(*(put(n // COROUTINES + (i < n % COROUTINES)) for i in range(COROUTINES)))
        for _ in range(CONSUMERS * COROUTINES):
            await r.xadd("jobs", {"stop": b""})
        await r.aclose()
    run_loop(main(), use_uvloop)


def redis_consume(port, who, use_uvloop):
    import redis.asyncio as redis

    async def main():
        r = redis.Redis(port=port)

        async def work(i):
            me = f"{who}-{i}"
            while True:
                got = await r.xreadgroup("workers", me, {"jobs": ">"}, count=1, block=0)
                [(_, [(msg_id, fields)])] = got
                await r.xack("jobs", "workers", msg_id)
                if b"stop" in fields:
                    return
        await asyncio.gather(*(work(i) for i in range(COROUTINES)))
        await r.aclose()
    run_loop(main(), use_uvloop)


def processes(produce, produce_args, consume, consume_args_each):
    ctx = mp.get_context("spawn")
    consumers = [ctx.Process(target=consume, args=a) for a in consume_args_each]
    for c in consumers:
        c.start()
    t = time.perf_counter()
    p = ctx.Process(target=produce, args=produce_args)
    p.start()
    p.join()
    for c in consumers:
        c.join()
    elapsed = time.perf_counter() - t
    bad = [x.exitcode for x in [p, *consumers] if x.exitcode != 0]
    if bad:
        raise SystemExit(f"a benchmark process failed: exit codes {bad}")
    return elapsed


def bench_ferry(url, n, use_uvloop):
    import ferry
    name = f"bench-aio-{os.getpid()}-{time.monotonic_ns()}"
    ferry.JoinableQueue(name=name, url=url)
    # Consumers start first and wait; the clock starts with the producer.
    elapsed = processes(ferry_produce, (url, name, n, use_uvloop),
                        ferry_consume, [(url, name, use_uvloop)] * CONSUMERS)
    left = ferry.connect(url).qsize(name)
    if left:
        raise SystemExit(f"ferry: {left} items left in the queue")
    return n / elapsed


def bench_redis(port, n, use_uvloop):
    import redis
    r = redis.Redis(port=port)
    r.delete("jobs")
    r.xgroup_create("jobs", "workers", id="0", mkstream=True)
    elapsed = processes(redis_produce, (port, n, use_uvloop),
                        redis_consume, [(port, f"c{i}", use_uvloop) for i in range(CONSUMERS)])
    pending = r.xpending("jobs", "workers")["pending"]
    if pending:
        raise SystemExit(f"redis: {pending} entries left pending")
    r.close()
    return n / elapsed


def bench_asyncio_queue(n, use_uvloop):
    async def main():
        q = asyncio.Queue()

        async def put(k):
            for _ in range(k):
                await q.put(ITEM)

        async def work():
            while True:
                item = await q.get()
                q.task_done()
                if item is None:
                    return
        workers = [asyncio.ensure_future(work()) for _ in range(CONSUMERS * COROUTINES)]
        t = time.perf_counter()
        await asyncio.gather(*(put(n // COROUTINES + (i < n % COROUTINES)) for i in range(COROUTINES)))
        for _ in workers:
            await q.put(None)
        await asyncio.gather(*workers)
        return time.perf_counter() - t
    return n / run_loop(main(), use_uvloop)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--uvloop", action="store_true", help="run every row on uvloop")
    ap.add_argument("--json", action="store_true", help="one JSON line per measurement (for bench/run.sh)")
    args = ap.parse_args()
    n = 5_000 if args.quick else args.n
    root = pathlib.Path(__file__).resolve().parents[1]
    binary = pathlib.Path(os.environ.get("FERRY_BIN") or root / "target" / "release" / "ferry")
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferry-cli"], cwd=root, check=True)
    servers = []
    with tempfile.TemporaryDirectory() as data:
        try:
            broker = subprocess.Popen(
                [str(binary), "serve", "--port", "0", "--durability", "memory", "--data-dir", data],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            servers.append(broker)
            url = "ferry://" + broker.stdout.readline().split()[1]
            port = free_port()
            servers.append(subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                 "--dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            import redis
            for _ in range(500):
                try:
                    redis.Redis(port=port).ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.01)
            loop = "uvloop" if args.uvloop else "asyncio"
            rows = (
                ("ferry.aio JoinableQueue", "ferry", lambda: bench_ferry(url, n, args.uvloop)),
                ("redis.asyncio streams", "redis-stream", lambda: bench_redis(port, n, args.uvloop)),
                ("asyncio.Queue, one process", "asyncio-queue-ceiling",
                 lambda: bench_asyncio_queue(n, args.uvloop)),
            )
            results = {label: f() for label, _, f in rows}
            if args.json:
                for label, target, _ in rows:
                    print(json.dumps({"workload": f"python: asyncio, 3 processes x {COROUTINES} coroutines ({loop})",
                                      "label": f"{target} memory", "value": results[label], "unit": "msg/s"}),
                          flush=True)
            else:
                f = results["ferry.aio JoinableQueue"]
                print(f"{n} items of 16 B; 1 producer + {CONSUMERS} consumer processes x {COROUTINES} coroutines; "
                      f"{loop}; Python {sys.version.split()[0]}")
                for label, value in results.items():
                    print(f"{label:<28} {value:>10.0f} items/s   ferry.aio / this = {f / value:.2f}")
        finally:
            for s in servers:
                s.terminate()
                s.wait()
            if servers and servers[0].stdout:
                servers[0].stdout.close()


if __name__ == "__main__":
    main()
