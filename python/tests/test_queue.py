"""ferry's Python queues against a real broker: the stdlib's signatures and
exceptions, threads, and processes (spawn and fork)."""

import multiprocessing
import os
import pickle
import queue
import threading
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


def test_task_done_and_join_with_threads():
    q = ferry.JoinableQueue()
    total = []

    def worker():
        while True:
            item = q.get()
            if item is None:
                q.task_done()
                return
            total.append(item)
            q.task_done()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(100):
        q.put(i)
    q.join()
    assert sum(total) == sum(range(100))
    for _ in threads:
        q.put(None)
    q.join()
    for t in threads:
        t.join()
    with pytest.raises(ValueError):
        q.task_done()


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
