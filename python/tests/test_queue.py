"""ferry's Python queues against a real broker: the stdlib's signatures and
exceptions, threads, and processes (spawn and fork)."""

import multiprocessing
import os
import pickle
import queue
import time

import pytest

import ferry


def test_put_get_and_the_stdlib_exceptions():
    q = ferry.Queue(2)
    assert q.empty() and not q.full() and q.maxsize == 2
    q.put(1)
    q.put_nowait({"two": 2})
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    t = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    assert time.monotonic() - t >= 0.05
    assert q.get() == 1
    assert q.get_nowait() == {"two": 2}
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(ValueError):
        q.get(timeout=-1)


def _consume(q, out):
    while True:
        item = q.get()
        if item is None:
            q.task_done()
            return
        out.put(item * 2)
        q.task_done()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_share_a_queue(method):
    ctx = multiprocessing.get_context(method)
    q = ferry.JoinableQueue(name=f"mp-{method}-{os.getpid()}")
    out = ferry.Queue()
    procs = [ctx.Process(target=_consume, args=(q, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for i in range(20):
        q.put(i)
    q.join()
    for _ in procs:
        q.put(None)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(out.get(timeout=5) for _ in range(20)) == [2 * i for i in range(20)]


def _take_and_die(q):
    q.get()
    os._exit(1)  # no task_done: the broker must deliver it again


def test_a_dead_consumer_does_not_hang_join():
    q = ferry.JoinableQueue()
    q.put("job")
    p = multiprocessing.get_context("spawn").Process(target=_take_and_die, args=(q,))
    p.start()
    p.join(timeout=30)
    assert q.get(timeout=10) == "job"  # redelivered
    q.task_done()
    q.join()


def test_pickling_keeps_the_name_and_shutdown_is_313():
    q = ferry.Queue()
    q.put("x")
    clone = pickle.loads(pickle.dumps(q))
    assert clone.name == q.name and clone.get() == "x"
    q.shutdown()
    assert q.is_shutdown
    with pytest.raises(ferry.ShutDown):
        q.put("late")
    with pytest.raises(ferry.ShutDown):
        q.get()


def test_maxsize_is_assignable():
    q = ferry.Queue(1)
    q.put(1)
    q.maxsize = 2
    q.put_nowait(2)
    assert q.full()


def _hold(lock, started, release):
    with lock:
        started.set()
        release.wait(10)


def test_lock_across_processes():
    ctx = multiprocessing.get_context("spawn")
    lock = ferry.Lock()
    started, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(lock, started, release))
    p.start()
    assert started.wait(30)
    assert not lock.acquire(timeout=0.1)
    assert not lock.acquire(block=False)
    release.set()
    assert lock.acquire(timeout=10)
    lock.release()
    with pytest.raises(ValueError):
        lock.release()
    p.join(timeout=30)


def test_serializers():
    raw = ferry.Queue(serializer="raw")
    raw.put(b"\x00bytes")
    assert raw.get() == b"\x00bytes"
    js = ferry.Queue(serializer="json")
    js.put({"a": [1, 2]})
    assert js.get() == {"a": [1, 2]}
    with pytest.raises(ValueError):
        ferry.Queue(serializer="xml")


def test_lifo_and_priority_orders_match_python():
    lifo = ferry.LifoQueue()
    for i in range(3):
        lifo.put(i)
    assert [lifo.get() for _ in range(3)] == [2, 1, 0]

    import heapq
    items = [(3, "c"), (1, "z"), (2, "b"), (1, "a"), (1.5, "x"), (-7, "neg"), (True, "one"), (0, "zero")]
    pq = ferry.PriorityQueue()
    for it in items:
        pq.put(it)
    heap = list(items)
    heapq.heapify(heap)
    assert [pq.get() for _ in items] == [heapq.heappop(heap) for _ in items]
    # Strings, bytes and None order as Python does within a type.
    for group in (["b", "a", "ab", ""], [b"\x00", b"", b"\x00\x01"], [(1, None), (0, None)]):
        q = ferry.PriorityQueue()
        for g in group:
            q.put(g)
        assert [q.get() for _ in group] == sorted(group)
    # (priority, anything): the key is the leading encodable elements.
    q = ferry.PriorityQueue()
    q.put((2, object()))
    q.put((1, object()))
    assert q.get()[0] == 1
    with pytest.raises(TypeError):
        q.put(object())


def _count(lock, path, n):
    for _ in range(n):
        with lock:
            with open(path) as f:
                value = int(f.read())
            with open(path, "w") as f:
                f.write(str(value + 1))


def test_a_lock_protected_counter_loses_no_update(tmp_path):
    path = tmp_path / "counter"
    path.write_text("0")
    lock = ferry.Lock()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count, args=(lock, str(path), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert path.read_text() == "100"


def _slow_worker(q, started):
    q.get()
    started.set()
    time.sleep(60)  # killed before task_done


def test_a_consumer_killed_mid_task_does_not_hang_join():
    import signal

    ctx = multiprocessing.get_context("spawn")
    q = ferry.JoinableQueue()
    q.put("work")
    started = ctx.Event()
    p = ctx.Process(target=_slow_worker, args=(q, started))
    p.start()
    assert started.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=30)
    assert q.get(timeout=10) == "work"  # redelivered
    q.task_done()
    q.join()


def _producer(q):
    for i in range(10):
        q.put(i)
    q.put(None)


def _consumer(q, out):
    total = 0
    while (item := q.get()) is not None:
        total += item
    out.put(total)


def test_child_to_child_through_a_queue():
    ctx = multiprocessing.get_context("spawn")
    q, out = ferry.Queue(), ferry.Queue()
    a = ctx.Process(target=_producer, args=(q,))
    b = ctx.Process(target=_consumer, args=(q, out))
    b.start()
    a.start()
    assert out.get(timeout=30) == 45
    for p in (a, b):
        p.join(timeout=30)


def test_python_m_ferry_serve_runs_a_broker(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry", "serve", "--port", "0", "--durability", "memory",
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening 127.0.0.1:"), line
        url = "ferry://" + line.split()[1]
        q = ferry.Queue(url=url)
        q.put("from the wheel")
        assert q.get(timeout=5) == "from the wheel"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


def test_batches():
    q = ferry.JoinableQueue()
    q.put_many(range(10))
    assert q.qsize() == 10
    got = q.get_many(4, timeout=5)
    assert got == [0, 1, 2, 3]
    for _ in got:
        q.task_done()
    rest = q.get_many(100, timeout=0)
    assert rest == list(range(4, 10))
    for _ in rest:
        q.task_done()
    q.join()
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0)


def _produce(q, start, n):
    for i in range(start, start + n):
        q.put(i)


def _daemon_consumer(q, results):
    while True:
        item = q.get()
        results.put(item * item)
        q.task_done()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_producer_consumer_with_daemon_consumers(method):
    # The classic lesson: 2 producer processes, 2 daemon consumers that
    # never return, and join() in the main process as the only way to know
    # the work is done.
    ctx = multiprocessing.get_context(method)
    jobs = ferry.JoinableQueue()
    results = ferry.Queue()
    consumers = [ctx.Process(target=_daemon_consumer, args=(jobs, results), daemon=True) for _ in range(2)]
    producers = [ctx.Process(target=_produce, args=(jobs, k * 50, 50)) for k in range(2)]
    for p in consumers + producers:
        p.start()
    for p in producers:
        p.join(30)
        assert p.exitcode == 0
    jobs.join()
    assert sorted(results.get(timeout=5) for _ in range(100)) == [i * i for i in range(100)]
    assert results.empty()
    for c in consumers:
        assert c.is_alive()  # daemons: they die with the main process
        c.terminate()
        c.join(10)
