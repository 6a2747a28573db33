"""A broker restarted while calls wait: they carry on (issue 12)."""

import os
import pathlib
import socket
import subprocess
import threading
import time

import ferry

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port, data):
    binary = os.environ.get("FERRY_BIN") or str(ROOT / "target" / "debug" / "ferry")
    # The HTTP port on a free port: its default, the RESP port + 1, may be
    # taken (by a cluster node, say).
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--http", "127.0.0.1:0",
                             "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().startswith("listening ")
    return proc


def stop(proc):
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()


def waiting(url, name, field):
    return dict(ferry.connect(url).info(name)).get(field, 0)


def until(cond, what):
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_blocked_get_and_join_survive_a_broker_restart(tmp_path):
    port = free_port()
    url = f"ferry://127.0.0.1:{port}"
    broker = serve(port, tmp_path)
    try:
        q = ferry.JoinableQueue(name="restart", url=url)
        done = ferry.JoinableQueue(name="restart-done", url=url)
        done.put("unfinished")
        results = {}

        def get():
            results["get"] = q.get(timeout=60)
            q.task_done()

        def join():
            done.join()
            results["join"] = True

        threads = [threading.Thread(target=get), threading.Thread(target=join)]
        for t in threads:
            t.start()
        until(lambda: waiting(url, "restart", "waiting_getters") == 1, "the get")
        until(lambda: waiting(url, "restart-done", "waiting_joiners") == 1, "the join")
        for _ in range(2):
            stop(broker)
            broker = serve(port, tmp_path)
        other = ferry.JoinableQueue(name="restart", url=url)
        other.put("after two restarts")
        finisher = ferry.JoinableQueue(name="restart-done", url=url)
        finisher.get()
        finisher.task_done()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert results == {"get": "after two restarts", "join": True}
    finally:
        stop(broker)


def _produce(url, name, first, n):
    q = ferry.JoinableQueue(name=name, url=url)
    for i in range(first, first + n):
        q.put(i)


def _consume(url, name, out):
    import warnings

    # An item got before a restart is delivered again (its task_done
    # warns that it will be): at least once.
    warnings.simplefilter("ignore", ferry.LeaseLostWarning)
    q = ferry.JoinableQueue(name=name, url=url)
    with open(out, "a") as f:
        while True:
            item = q.get(timeout=60)
            if item is None:
                q.task_done()
                return
            f.write(f"{item}\n")
            f.flush()
            q.task_done()


def test_five_restarts_under_producer_consumer_load(tmp_path):
    """The lesson's producer-consumer program (2 producer and 2 consumer
    processes, and a ferry worker on the same queue) while the broker is
    restarted 5 times: it completes, every item is done (at least once),
    and no process saw an error."""
    import multiprocessing as mp

    port = free_port()
    url = f"ferry://127.0.0.1:{port}"
    broker = serve(port, tmp_path / "data")
    binary = os.environ.get("FERRY_BIN") or str(ROOT / "target" / "debug" / "ferry")
    worker_out = tmp_path / "worker.txt"
    worker = None
    try:
        q = ferry.JoinableQueue(name="pc", url=url)
        n, per = 2, 4000
        producers = [mp.Process(target=_produce, args=(url, "pc", i * per, per)) for i in range(n)]
        consumers = [mp.Process(target=_consume, args=(url, "pc", tmp_path / f"c{i}.txt"))
                     for i in range(n)]
        for p in producers + consumers:
            p.start()
        # ferry worker takes raw payloads: it sees pickles, and counts lines.
        worker = subprocess.Popen(
            [binary, "worker", "pc", "-j", "2", "--url", url, "--", "sh", "-c",
             f"cat >/dev/null; echo x >> {worker_out}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        under_load = 0
        for i in range(5):
            before = dict(ferry.connect(url).info("pc")).get("done", 0)
            until(lambda: dict(ferry.connect(url).info("pc")).get("done", 0) > before + 200,
                  f"progress before restart {i + 1}")
            under_load += dict(ferry.connect(url).info("pc"))["unfinished"] > 0
            stop(broker)
            broker = serve(port, tmp_path / "data")
        assert under_load == 5, "each restart came while work was under way"
        for p in producers:
            p.join(120)
            assert p.exitcode == 0, "a producer saw an error"
        q.join()
        # The worker goes first, so that each consumer gets its sentinel.
        worker.terminate()
        assert worker.wait(30) == 0, "the worker saw an error"
        worker = None
        for _ in consumers:
            q.put(None)
        for c in consumers:
            c.join(120)
            assert c.exitcode == 0, "a consumer saw an error"
        q.join()
        seen = set()
        for i in range(n):
            path = tmp_path / f"c{i}.txt"
            if path.exists():
                seen |= {int(line) for line in path.read_text().split()}
        by_worker = len(worker_out.read_text().split()) if worker_out.exists() else 0
        info = dict(ferry.connect(url).info("pc"))
        assert info["unfinished"] == 0
        # Every item was done: by a Python consumer, or by the worker.
        assert len(seen) + by_worker >= n * per, (len(seen), by_worker)
        assert seen <= set(range(n * per))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
            assert worker.returncode == 0, "the worker saw an error"
        stop(broker)


def test_asyncio_gets_puts_and_joins_survive_broker_restarts(tmp_path):
    """ferry.aio: a waiting get and join, and puts, across two restarts."""
    import asyncio

    import ferry.aio

    port = free_port()
    url = f"ferry://127.0.0.1:{port}"
    broker = serve(port, tmp_path)

    async def main():
        nonlocal broker
        q = ferry.aio.JoinableQueue(name="aio-restart", url=url)
        getter = asyncio.ensure_future(q.get())
        await q.put("before")
        assert await getter == "before"
        q.task_done()
        getter = asyncio.ensure_future(q.get())
        await asyncio.to_thread(until, lambda: waiting(url, "aio-restart", "waiting_getters") == 1,
                                "the get")
        for _ in range(2):
            await asyncio.to_thread(stop, broker)
            broker = await asyncio.to_thread(serve, port, tmp_path)
        await q.put("after two restarts")
        assert await asyncio.wait_for(getter, 60) == "after two restarts"
        q.task_done()
        await asyncio.wait_for(q.join(), 60)

    try:
        asyncio.run(main())
    finally:
        stop(broker)
