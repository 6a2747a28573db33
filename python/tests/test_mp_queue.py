"""multiprocessing's queue and lock tests (_TestQueue and _TestLock of
CPython's Lib/test/_test_multiprocessing.py), ported to ferry's classes:
each runs with the spawn and the fork start methods, and the queue tests
run once with plain calls and once with prefetch and write-behind on (the
mode that behaves most like multiprocessing.Queue, feeder thread and all).

Differences, each on purpose: a put whose item cannot be pickled raises
in the caller (multiprocessing's feeder thread prints it and drops the
item); no sleep is needed after a put before the queue shows the item,
unless write-behind is on.
"""

import multiprocessing
import queue as pyqueue
import threading
import time

import pytest

import ferry

DELTA = 0.1
TIMEOUT1, TIMEOUT2, TIMEOUT3 = 0.3, 0.1, 0.5

methods = pytest.mark.parametrize("method", ["spawn", "fork"])
modes = pytest.mark.parametrize("fast", [False, True], ids=["plain", "prefetch+write-behind"])


def options(fast):
    return {"prefetch": 4, "write_behind": 16} if fast else {}


class TimingWrapper:
    def __init__(self, func):
        self.func = func
        self.elapsed = None

    def __call__(self, *args, **kwds):
        t = time.monotonic()
        try:
            return self.func(*args, **kwds)
        finally:
            self.elapsed = time.monotonic() - t


def assert_timing_almost_equal(a, b):
    """multiprocessing's tests check timeouts to within 0.1 s either way;
    on a shared machine only the lower bound is a property (never early).
    A call that must not wait (b == 0) is checked not to have waited for
    a timeout: well under a second."""
    assert a >= b - 0.01, f"{a:.3f} s: early, expected {b:.3f} s"
    if b == 0:
        assert a < 1, f"{a:.3f} s: it waited"


def settle(q):
    """Write-behind puts reach the broker a moment later; a test that
    checks the queue's state right after putting sends them first."""
    q.flush()


def _test_put(queue, child_can_start, parent_can_continue):
    child_can_start.wait()
    for i in range(6):
        queue.get()
    queue.close()  # gives back whatever was fetched ahead
    parent_can_continue.set()


@methods
@modes
def test_put(method, fast):
    ctx = multiprocessing.get_context(method)
    MAXSIZE = 6
    queue = ferry.Queue(maxsize=MAXSIZE, **options(fast))
    child_can_start = ctx.Event()
    parent_can_continue = ctx.Event()
    proc = ctx.Process(target=_test_put, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()

    assert queue.empty()
    assert not queue.full()

    queue.put(1)
    queue.put(2, True)
    queue.put(3, True, None)
    queue.put(4, False)
    queue.put(5, False, None)
    queue.put_nowait(6)
    if fast:
        settle(queue)
        # Write-behind puts go through the feeder thread, which waits for
        # room; the Full checks below are for plain puts.
        plain = ferry.Queue(maxsize=MAXSIZE, name=queue.name)
    else:
        plain = queue

    assert not queue.empty()
    assert queue.full()

    put = TimingWrapper(plain.put)
    put_nowait = TimingWrapper(plain.put_nowait)
    with pytest.raises(pyqueue.Full):
        put(7, False)
    assert_timing_almost_equal(put.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put(7, False, None)
    assert_timing_almost_equal(put.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put_nowait(7)
    assert_timing_almost_equal(put_nowait.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put(7, True, TIMEOUT1)
    assert_timing_almost_equal(put.elapsed, TIMEOUT1)
    with pytest.raises(pyqueue.Full):
        put(7, False, TIMEOUT2)
    assert_timing_almost_equal(put.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put(7, True, timeout=TIMEOUT3)
    assert_timing_almost_equal(put.elapsed, TIMEOUT3)

    child_can_start.set()
    assert parent_can_continue.wait(30)

    assert queue.empty()
    assert not queue.full()
    proc.join(30)
    assert proc.exitcode == 0
    queue.close()


def _test_get(queue, child_can_start, parent_can_continue):
    child_can_start.wait()
    queue.put(2)
    queue.put(3)
    queue.put(4)
    queue.put(5)
    queue.flush()
    parent_can_continue.set()


@methods
@modes
def test_get(method, fast):
    ctx = multiprocessing.get_context(method)
    queue = ferry.Queue(**options(fast))
    child_can_start = ctx.Event()
    parent_can_continue = ctx.Event()
    proc = ctx.Process(target=_test_get, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()

    assert queue.empty()
    child_can_start.set()
    assert parent_can_continue.wait(30)
    assert not queue.empty()

    assert queue.get(True, None) == 2
    assert queue.get(True) == 3
    assert queue.get(timeout=1) == 4
    assert queue.get_nowait() == 5
    assert queue.empty()

    get = TimingWrapper(queue.get)
    get_nowait = TimingWrapper(queue.get_nowait)
    with pytest.raises(pyqueue.Empty):
        get(False)
    assert_timing_almost_equal(get.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get(False, None)
    assert_timing_almost_equal(get.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get_nowait()
    assert_timing_almost_equal(get_nowait.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get(True, TIMEOUT1)
    assert_timing_almost_equal(get.elapsed, TIMEOUT1)
    with pytest.raises(pyqueue.Empty):
        get(False, TIMEOUT2)
    assert_timing_almost_equal(get.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get(timeout=TIMEOUT3)
    assert_timing_almost_equal(get.elapsed, TIMEOUT3)

    proc.join(30)
    assert proc.exitcode == 0
    queue.close()


def _test_fork(queue):
    for i in range(10, 20):
        queue.put(i)
    # note that at this point the items may only be buffered, so the
    # process cannot shut down until the feeder thread has sent them.


@methods
@modes
def test_fork(method, fast):
    # Old versions of multiprocessing.Queue would fail to create a new
    # feeder thread for a forked process if the original process had its
    # own feeder thread. This test checks that this does not happen.
    ctx = multiprocessing.get_context(method)
    queue = ferry.Queue(**options(fast))
    # put items on queue so that main process starts a feeder thread
    for i in range(10):
        queue.put(i)
    # make sure the feeder thread ran (it sent the items) before we fork
    settle(queue)
    p = ctx.Process(target=_test_fork, args=(queue,))
    p.daemon = True
    p.start()
    # check that all expected items are in the queue
    for i in range(20):
        assert queue.get(timeout=30) == i
    with pytest.raises(pyqueue.Empty):
        queue.get(False)
    p.join(30)
    queue.close()


@modes
def test_qsize(fast):
    q = ferry.Queue(**options(fast))
    assert q.qsize() == 0
    q.put(1)
    settle(q)
    assert q.qsize() == 1
    q.put(5)
    settle(q)
    assert q.qsize() == 2
    q.get()
    assert q.qsize() == 1
    q.get()
    assert q.qsize() == 0
    q.close()


def _test_task_done(q):
    for obj in iter(q.get, None):
        time.sleep(DELTA)
        q.task_done()
    q.task_done()


@methods
@modes
def test_task_done(method, fast):
    ctx = multiprocessing.get_context(method)
    queue = ferry.JoinableQueue(**options(fast))
    workers = [ctx.Process(target=_test_task_done, args=(queue,)) for _ in range(4)]
    for p in workers:
        p.daemon = True
        p.start()
    for i in range(10):
        queue.put(i)
    queue.join()
    for p in workers:
        queue.put(None)
    queue.flush()
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    queue.close()


def test_timeout():
    q = ferry.Queue()
    start = time.time()
    with pytest.raises(pyqueue.Empty):
        q.get(True, 0.200)
    delta = time.time() - start
    assert delta >= 0.170
    q.close()


@modes
def test_queue_feeder_donot_stop_onexc(fast):
    # bpo-30414: a put that cannot be serialized leaves the queue working.
    class NotSerializable:
        def __reduce__(self):
            raise AttributeError

    q = ferry.Queue(**options(fast))
    with pytest.raises(AttributeError):
        q.put(NotSerializable())
    q.put(True)
    assert q.get(timeout=1.0)
    q.close()


# _TestLock


def test_lock():
    lock = ferry.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.release() is None
    with pytest.raises((ValueError, threading.ThreadError)):
        lock.release()


def test_lock_context():
    with ferry.Lock():
        pass


def test_a_lost_lock_says_so_and_its_release_raises_lock_lost():
    # Lost as a broker restart or an overdue heartbeat would lose it: the
    # grant ends without its holder (here, UNLOCK by token from another
    # connection), and the next holder gets a larger token.
    lock = ferry.Lock()
    assert lock.acquire() and not lock.lost
    token = lock.token
    assert ferry.connect().call([b"UNLOCK", lock._name.encode(), str(token).encode()]) == 1
    assert lock.lost
    other = ferry.Lock(name=lock._name)
    assert other.acquire(timeout=5) and other.token > token
    with pytest.raises(ferry.LockLost) as lost:
        lock.release()
    assert isinstance(lost.value, ValueError)
    assert not lock.lost  # no longer acquired by this handle
    other.release()


def test_lock_timeout():
    lock = ferry.Lock()
    other = ferry.Lock(name=lock._name)
    assert lock.acquire()
    acquire = TimingWrapper(other.acquire)
    assert acquire(False) is False
    assert_timing_almost_equal(acquire.elapsed, 0)
    assert acquire(True, TIMEOUT2) is False
    assert_timing_almost_equal(acquire.elapsed, TIMEOUT2)
    assert acquire(timeout=TIMEOUT3) is False
    assert_timing_almost_equal(acquire.elapsed, TIMEOUT3)
    lock.release()
    assert acquire(timeout=TIMEOUT3) is True
    other.release()
