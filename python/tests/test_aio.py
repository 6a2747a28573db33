"""ferry.aio beyond CPython's tests: cancellation at random moments, many
processes of many coroutines with one killed, blocking and asyncio users
of one queue, the lock, uvloop."""

import asyncio
import multiprocessing as mp
import os
import random
import signal
import time

import pytest

import ferry
import ferry.aio


def info(name) -> dict:
    return dict(ferry.connect().info(name))


async def until(cond, what="the condition", limit=60):
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("cls", [ferry.aio.Queue, ferry.aio.JoinableQueue], ids=lambda c: c.__name__)
def test_gets_and_puts_cancelled_at_random_moments_lose_nothing_and_deliver_once(cls):
    rng = random.Random(15)
    n_items, n_putters, n_getters = 6000, 8, 16

    async def main():
        q = cls(maxsize=5)
        put_ok, put_cancelled, got = [], [], []
        next_item = iter(range(n_items))
        cancels = {"put": 0, "get": 0}

        async def putter():
            for item in next_item:
                try:
                    # Cancelled at random: before, during or after its wait.
                    await asyncio.wait_for(q.put(item), rng.choice([0, 0.0005, 0.002, 0.01, 1]))
                    put_ok.append(item)
                except TimeoutError:
                    put_cancelled.append(item)
                    cancels["put"] += 1

        async def getter(stop):
            while not stop.is_set():
                task = asyncio.ensure_future(q.get())
                # Cancelled at random, by a timeout or by task.cancel().
                if rng.random() < 0.5:
                    asyncio.get_running_loop().call_later(rng.choice([0, 0.0002, 0.001, 0.005]), task.cancel)
                try:
                    item = await asyncio.wait_for(task, rng.choice([0.001, 0.005, 0.05]))
                except (TimeoutError, asyncio.CancelledError):
                    if asyncio.current_task().cancelling():
                        raise  # this getter itself is being cancelled: stop
                    cancels["get"] += 1
                    continue
                got.append(item)
                q.task_done()

        stop = asyncio.Event()
        getters = [asyncio.ensure_future(getter(stop)) for _ in range(n_getters)]
        await asyncio.gather(*(putter() for _ in range(n_putters)))
        # Everything put is got (items a cancelled get left here go back
        # within RETURN_AFTER).
        await until(lambda: len(got) >= len(put_ok) and q.qsize() == 0 and not q._fetched,
                    "every completed put to be got")
        stop.set()
        await asyncio.gather(*getters)
        await q.join()
        await q.aclose()
        left = []
        while True:
            try:
                left.append(q.get_nowait())
                q.task_done()
            except asyncio.QueueEmpty:
                break
        await q.join()
        delivered = got + left
        assert len(delivered) == len(set(delivered)), "an item was delivered twice"
        assert set(put_ok) <= set(delivered), "a completed put was lost"
        assert set(delivered) <= set(put_ok) | set(put_cancelled), "an item came from nowhere"
        # A cancelled put happened once or not at all, and the broker's
        # count of unfinished items agrees: nothing is held anywhere.
        s = info(q.name)
        assert s["unfinished"] == 0 and q.qsize() == 0, s
        assert cancels["get"] + cancels["put"] > 1000, cancels
        print(f"{cls.__name__}: {len(put_ok)} puts completed, {cancels['put']} cancelled "
              f"({len(set(put_cancelled) & set(delivered))} of those happened); "
              f"{len(got)} gets completed, {cancels['get']} cancelled; {len(left)} left over")
        q.drop()

    asyncio.run(main())


def _consumer(name, results, kill_after, note):
    """A process of 100 coroutines; with `kill_after`, the coroutine that
    gets the process's kill_after-th item notes it and kills the whole
    process before task_done."""
    async def main():
        q = ferry.aio.JoinableQueue(name=name)
        out = ferry.aio.Queue(name=results)
        got = 0

        async def work():
            nonlocal got
            while True:
                item = await q.get()
                if item is None:
                    q.task_done()
                    return
                got += 1
                if got == kill_after:
                    with open(note, "w") as f:
                        f.write(str(item))
                    os.kill(os.getpid(), signal.SIGKILL)
                await asyncio.sleep(0.001)  # the work: items are in flight in every process
                await out.put((os.getpid(), item))
                q.task_done()
        await asyncio.gather(*(work() for _ in range(100)))
    asyncio.run(main())


def test_four_processes_of_100_coroutines_and_one_killed_mid_task(tmp_path):
    name, results = f"aio-kill-{os.getpid()}", f"aio-kill-out-{os.getpid()}"
    q = ferry.JoinableQueue(name=name)     # the blocking class, same queue
    ferry.Queue(name=results)
    n = 4000
    note = tmp_path / "killed-on"
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_consumer, args=(name, results, 300 if i == 0 else None, str(note)))
          for i in range(4)]
    for p in ps:
        p.start()
    # Every process waits in the queue (one broker wait each) before the
    # items come, so each gets its share.
    deadline = time.monotonic() + 120
    while info(name)["waiting_getters"] < 4:
        assert time.monotonic() < deadline, "the consumers did not start"
        time.sleep(0.01)
    for i in range(n):
        q.put(i)
    # join() returns: the dead process's leased items came back.
    q.join()
    victim, others = ps[0], ps[1:]
    victim.join(120)
    assert victim.exitcode == -signal.SIGKILL
    for _ in range(300):
        q.put(None)
    for p in others:
        p.join(120)
        assert p.exitcode == 0
    done = ferry.Queue(name=results)
    seen = []
    while True:
        try:
            seen.append(done.get_nowait())
        except ferry.Empty:
            break
    killed_on = int(note.read_text())
    by_victim = [i for pid, i in seen if pid == victim.pid]
    by_live = [i for pid, i in seen if pid != victim.pid]
    # What the victim had not finished when it died came back: each item
    # was finished once by the live processes, unless the victim finished
    # it (it may also have done work whose task_done it had not sent).
    assert len(by_live) == len(set(by_live)), "a live process got an item twice"
    assert set(by_live) | set(by_victim) == set(range(n))
    assert killed_on in by_live and killed_on not in by_victim
    assert info(name)["unfinished"] == 0
    print(f"the victim finished {len(by_victim)} items before SIGKILL (on item {killed_on}); "
          f"the others {len(by_live)}")
    q.drop()
    done.drop()


def _blocking_side(name, n):
    q = ferry.JoinableQueue(name=name)
    for i in range(n):
        q.put(("blocking", i))
    got = 0
    while got < n:
        q.get()
        q.task_done()
        got += 1


def test_blocking_and_asyncio_users_share_one_queue():
    name = f"aio-mixed-{os.getpid()}"
    n = 500
    ferry.JoinableQueue(name=name)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_blocking_side, args=(name, n))

    async def main():
        q = ferry.aio.JoinableQueue(name=name)
        p.start()
        for i in range(n):
            await q.put(("aio", i))

        async def consume(k):
            for _ in range(k):
                await q.get()
                q.task_done()
        await asyncio.gather(*(consume(n // 10) for _ in range(10)))
        await q.join()

    asyncio.run(main())
    p.join(120)
    assert p.exitcode == 0
    s = info(name)
    assert s["unfinished"] == 0 and s["delivered"] >= 2 * n, s
    ferry.connect().call([b"QDROP", name.encode()])


def _locker(name, path, rounds):
    async def main():
        lock = ferry.aio.Lock(name=name)

        async def bump():
            for _ in range(rounds):
                async with lock:
                    # Read, yield, write: without the lock, updates are lost.
                    with open(path) as f:
                        v = int(f.read())
                    await asyncio.sleep(0)
                    with open(path, "w") as f:
                        f.write(str(v + 1))
        await asyncio.gather(*(bump() for _ in range(5)))
    asyncio.run(main())


def test_lock_serializes_coroutines_of_many_processes(tmp_path):
    name = f"aio-lock-{os.getpid()}"
    path = tmp_path / "counter"
    path.write_text("0")
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_locker, args=(name, str(path), 20)) for _ in range(3)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    assert int(path.read_text()) == 3 * 5 * 20


def test_a_cancelled_acquire_leaves_the_lock_free():
    async def main():
        lock = ferry.aio.Lock()
        other = ferry.aio.Lock(name=lock._name)
        await lock.acquire()
        for delay in (0, 0.001, 0.01):
            t = asyncio.ensure_future(other.acquire())
            await asyncio.sleep(delay)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        assert not other.locked()
        lock.release()
        # Free for the next, at once: no cancelled acquire took it.
        await asyncio.wait_for(other.acquire(), 10)
        other.release()
        with pytest.raises(RuntimeError):
            other.release()

    asyncio.run(main())


def test_runs_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        q = ferry.aio.JoinableQueue(maxsize=3)
        got = []

        async def consume():
            while True:
                item = await q.get()
                got.append(item)
                q.task_done()
        consumers = [asyncio.ensure_future(consume()) for _ in range(5)]
        for i in range(200):
            await q.put(i)
        await q.join()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(q.get(), 0.01)
        for c in consumers:
            c.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        assert sorted(got) == list(range(200))
        q.drop()

    uvloop.run(main())


def test_prefetch_gives_back_what_it_did_not_hand_out():
    async def main():
        q = ferry.aio.JoinableQueue(prefetch=10)
        for i in range(25):
            q.put_nowait(i)
        assert await q.get() == 0
        q.task_done()
        assert len(q._fetched) == 9
        await q.aclose()
        plain = ferry.aio.JoinableQueue(name=q.name)
        rest = [await plain.get() for _ in range(24)]
        assert sorted(rest) == list(range(1, 25))
        for _ in rest:
            plain.task_done()
        await plain.join()
        q.drop()

    asyncio.run(main())


def test_a_get_cancelled_while_the_loop_ends_gives_its_item_back():
    # asyncio.run cancels what is still waiting as it ends; an item the
    # broker delivered in that moment is not lost with the loop.
    q = ferry.aio.Queue()

    async def main():
        asyncio.ensure_future(q.get())
        await until(lambda: info(q.name)["waiting_getters"] == 1)
        q.put_nowait("x")

    asyncio.run(main())

    async def again():
        return await asyncio.wait_for(q.get(), 10)

    assert asyncio.run(again()) == "x"
    q.drop()


def test_errors_are_asyncios():
    async def main():
        q = ferry.aio.Queue(maxsize=1)
        q.put_nowait(1)
        with pytest.raises(asyncio.QueueFull):
            q.put_nowait(2)
        q.get_nowait()
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()
        p = ferry.aio.PriorityQueue()
        await p.put((1, "a"))
        with pytest.raises(TypeError):
            await p.put(("x", "b"))
        q.shutdown()
        with pytest.raises(ferry.aio.ShutDown):
            await q.get()
        with pytest.raises(ferry.ShutDown):
            await q.put(1)
        q.drop()
        p.drop()

    asyncio.run(main())


def test_the_stubs_list_every_public_method():
    import ast
    import pathlib

    stub = ast.parse(pathlib.Path(ferry.aio.__file__).with_suffix(".pyi").read_text())
    stubbed = {node.name: {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
               for node in stub.body if isinstance(node, ast.ClassDef)}
    for name in ("Queue", "Lock"):
        cls = getattr(ferry.aio, name)
        public = {m for m in vars(cls) if not m.startswith("_")}
        assert public <= stubbed[name], f"{name}: not in aio.pyi: {public - stubbed[name]}"


def test_unix_socket_and_password_urls(tmp_path):
    # The URLs the blocking classes accept: a Unix socket, a password.
    import pathlib
    import subprocess

    binary = os.environ.get("FERRY_BIN") or str(pathlib.Path(__file__).resolve().parents[2] / "target" / "debug" / "ferry")
    sock = tmp_path / "ferry.sock"
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--durability", "memory", "--data-dir", str(tmp_path),
                             "--unix", str(sock), "--requirepass", "s3cret"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = proc.stdout.readline().rsplit(":", 1)[1].strip()
        urls = [f"unix://{sock}?password=s3cret", f"ferry://:s3cret@127.0.0.1:{port}"]

        async def main():
            for url in urls:
                q = ferry.aio.JoinableQueue(url=url)
                waiting_get = asyncio.ensure_future(q.get())
                await q.put("over " + url.split(":")[0])
                assert await waiting_get == "over " + url.split(":")[0]
                q.task_done()
                await q.join()
                async with ferry.aio.Lock(url=url):
                    pass
            with pytest.raises(ferry.FerryError):
                ferry.aio.Queue(url=f"ferry://127.0.0.1:{port}")   # no password

        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def _forked_child(q, out):
    async def main():
        item = await q.get()
        q.task_done()
        await out.put(item * 10)
    asyncio.run(main())


def test_a_child_forked_from_inside_a_running_loop_leaves_the_parents_alone():
    async def main():
        q, out = ferry.aio.JoinableQueue(), ferry.aio.Queue()
        parent_get = asyncio.ensure_future(out.get())     # the parent waits meanwhile
        await until(lambda: info(out.name)["waiting_getters"] == 1)
        child = mp.get_context("fork").Process(target=_forked_child, args=(q, out))
        child.start()
        await q.put(7)
        # The parent's loop is woken by its own replies, not robbed of them.
        assert await asyncio.wait_for(parent_get, 60) == 70
        await asyncio.get_running_loop().run_in_executor(None, child.join, 60)
        assert child.exitcode == 0
        await q.join()
        for i in range(50):
            await out.put(i)
            assert await asyncio.wait_for(out.get(), 10) == i
        q.drop()
        out.drop()

    asyncio.run(main())


def _exit_holding_a_prefetched_window(name):
    async def main():
        q = ferry.aio.JoinableQueue(name=name, prefetch=10)
        await q.get()
        q.task_done()
        assert len(q._fetched) == 9

    asyncio.run(main())
    # Exits without aclose(): its finalizer gives the window back.


def test_a_prefetched_window_left_at_exit_goes_back_unstarted():
    # Items fetched ahead and never handed out were never begun: they go
    # back with no attempt counted, so MAXATTEMPTS 1 does not dead-letter
    # them. The task_done() the loop ended before sending is sent too.
    name = f"aio-exit-{os.getpid()}"
    ferry.connect().call([b"QCREATE", name.encode(), b"MAXATTEMPTS", b"1"])
    producer = ferry.JoinableQueue(name=name, write_behind=0)
    for i in range(10):
        producer.put(i)
    p = mp.get_context("spawn").Process(target=_exit_holding_a_prefetched_window, args=(name,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    counts = info(name)
    assert (counts["qsize"], counts["done"], counts["dead_lettered"], counts["unfinished"]) == (9, 1, 0, 9), counts
    producer.drop()
