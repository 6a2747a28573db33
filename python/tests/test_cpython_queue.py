"""CPython's Lib/test/test_queue.py, ported to ferry's classes.

Each test keeps the name of the CPython test it comes from and runs, as
CPython's mixins do, against every queue class: Queue, LifoQueue,
PriorityQueue, and JoinableQueue (whose gets are leased). What cannot be
ported: the FailingQueue tests (they override the private _put/_get) and
the C-implementation and reentrancy checks of SimpleQueue.
"""

import queue
import threading
import time

import pytest

import ferry

QUEUE_SIZE = 5

ORDERS = {
    ferry.Queue: [111, 333, 222],
    ferry.JoinableQueue: [111, 333, 222],
    ferry.LifoQueue: [222, 333, 111],
    ferry.PriorityQueue: [111, 222, 333],
}

kinds = pytest.mark.parametrize("cls", list(ORDERS), ids=lambda c: c.__name__)


def unfinished(q):
    return dict(ferry.connect().info(q.name))["unfinished"]


def wait_for_a_waiter(q):
    """Waits until a get, put or join blocks in the broker on q (where
    CPython's tests sleep 0.1 s and hope it did)."""
    conn = ferry.connect()
    deadline = time.monotonic() + 60
    while True:
        info = dict(conn.info(q.name))
        if info["waiting_getters"] + info["waiting_putters"] + info["waiting_joiners"]:
            return
        assert time.monotonic() < deadline, "nothing blocked"
        time.sleep(0.005)


class _TriggerThread(threading.Thread):
    """CPython's _TriggerThread: runs fn once the blocking call in the main
    thread has blocked (it sleeps 0.1 s instead, and hopes)."""

    def __init__(self, q, fn, args):
        self.q, self.fn, self.args = q, fn, args
        self.started = threading.Event()
        super().__init__()

    def run(self):
        wait_for_a_waiter(self.q)
        self.started.set()
        self.fn(*self.args)


def do_blocking_test(block_func, block_args, trigger_func, trigger_args):
    t = _TriggerThread(block_func.__self__, trigger_func, trigger_args)
    t.start()
    try:
        result = block_func(*block_args)
        assert t.started.is_set(), f"blocking function {block_func!r} appeared not to block"
        return result
    finally:
        t.join(10)
        assert not t.is_alive(), f"trigger function {trigger_func!r} appeared to not return"


def simple_queue_test(cls, q):
    assert q.empty(), "call this function with an empty queue"
    assert q.qsize() == 0
    assert not q.full()
    for x in (111, 333, 222):
        q.put(x)
    target_order = ORDERS[cls]
    actual_order = [q.get(), q.get(), q.get()]
    assert actual_order == target_order, "didn't seem to queue the correct data!"
    for i in range(QUEUE_SIZE - 1):
        q.put(i)
        assert q.qsize(), "queue should not be empty"
    assert not q.full(), "queue should not be full"
    last = 2 * QUEUE_SIZE
    full = 3 * 2 * QUEUE_SIZE
    q.put(last)
    assert q.full(), "queue should be full"
    assert not q.empty()
    assert q.qsize() == QUEUE_SIZE
    with pytest.raises(queue.Full):
        q.put(full, block=0)
    with pytest.raises(queue.Full):
        q.put(full, timeout=0.01)
    # Test a blocking put
    do_blocking_test(q.put, (full,), q.get, ())
    do_blocking_test(q.put, (full, True, 10), q.get, ())
    # Empty it
    for _ in range(QUEUE_SIZE):
        q.get()
    assert not q.qsize(), "queue should be empty"
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(True, 0.01)
    # Test a blocking get
    assert do_blocking_test(q.get, (), q.put, ("empty",)) == "empty"
    assert do_blocking_test(q.get, (True, 10), q.put, ("empty",)) == "empty"
    # Gets of a JoinableQueue are leased: finish them all.
    if cls is ferry.JoinableQueue:
        while True:
            try:
                q.task_done()
            except ValueError:
                break


@kinds
def test_basic(cls):
    # Do it a couple of times on the same queue. Done twice to make sure
    # it works with the same instance reused.
    q = cls(QUEUE_SIZE)
    simple_queue_test(cls, q)
    simple_queue_test(cls, q)


def queue_join_test(q):
    cum = []
    cumlock = threading.Lock()

    def worker():
        while True:
            x = q.get()
            if x < 0:
                q.task_done()
                return
            with cumlock:
                cum.append(x)
            q.task_done()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(100):
        q.put(i)
    q.join()
    assert sum(cum) == sum(range(100)), "q.join() did not block until all tasks were done"
    for _ in threads:
        q.put(-1)  # instruct the threads to close
    q.join()  # verify that you can join twice
    for t in threads:
        t.join()


@kinds
def test_queue_task_done(cls):
    # Test to make sure a queue task completed successfully.
    q = cls()
    with pytest.raises(ValueError):
        q.task_done()


@kinds
def test_queue_join(cls):
    # Test that a queue join()s successfully, and before anything else
    # (done twice for insurance).
    q = cls()
    queue_join_test(q)
    queue_join_test(q)
    with pytest.raises(ValueError):
        q.task_done()


@kinds
def test_negative_timeout_raises_exception(cls):
    q = cls(QUEUE_SIZE)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError):
        q.get(1, timeout=-1)


@kinds
def test_nowait(cls):
    q = cls(QUEUE_SIZE)
    for i in range(QUEUE_SIZE):
        q.put_nowait(1)
    with pytest.raises(queue.Full):
        q.put_nowait(1)
    for i in range(QUEUE_SIZE):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get_nowait()


@kinds
def test_shrinking_queue(cls):
    # issue 10110
    q = cls(3)
    q.put(1)
    q.put(2)
    q.put(3)
    with pytest.raises(queue.Full):
        q.put_nowait(4)
    assert q.qsize() == 3
    q.maxsize = 2  # shrink the queue
    with pytest.raises(queue.Full):
        q.put_nowait(4)


@kinds
def test_shutdown_empty(cls):
    q = cls()
    q.shutdown()
    with pytest.raises(ferry.ShutDown):
        q.put("data")
    with pytest.raises(ferry.ShutDown):
        q.get()


@kinds
def test_shutdown_nonempty(cls):
    q = cls()
    q.put("data")
    q.shutdown()
    q.get()
    with pytest.raises(ferry.ShutDown):
        q.get()


@kinds
def test_shutdown_immediate(cls):
    q = cls()
    q.put("data")
    q.shutdown(immediate=True)
    with pytest.raises(ferry.ShutDown):
        q.get()


@kinds
def test_shutdown_allowed_transitions(cls):
    # allowed transitions would be from alive via shutdown to immediate
    q = cls()
    assert not q.is_shutdown
    q.shutdown()
    assert q.is_shutdown
    q.shutdown(immediate=True)
    assert q.is_shutdown
    q.shutdown(immediate=False)
    assert q.is_shutdown


def _shutdown_all_methods_in_one_thread(cls, immediate):
    q = cls(2)
    q.put("L")
    q.put_nowait("O")
    q.shutdown(immediate)
    with pytest.raises(ferry.ShutDown):
        q.put("E")
    with pytest.raises(ferry.ShutDown):
        q.put_nowait("W")
    if immediate:
        with pytest.raises(ferry.ShutDown):
            q.get()
        with pytest.raises(ferry.ShutDown):
            q.get_nowait()
        with pytest.raises(ValueError):
            q.task_done()
        q.join()
    else:
        assert q.get() in "LO"
        q.task_done()
        assert q.get() in "LO"
        q.task_done()
        q.join()
        # on shutdown(immediate=False)
        # when queue is empty, should raise ShutDown Exception
        with pytest.raises(ferry.ShutDown):
            q.get()  # p.get(True)
        with pytest.raises(ferry.ShutDown):
            q.get_nowait()  # p.get(False)
        with pytest.raises(ferry.ShutDown):
            q.get(True, 1.0)


@kinds
def test_shutdown_all_methods_in_one_thread(cls):
    _shutdown_all_methods_in_one_thread(cls, False)


@kinds
def test_shutdown_immediate_all_methods_in_one_thread(cls):
    _shutdown_all_methods_in_one_thread(cls, True)


@kinds
def test_shutdown_pending_get(cls):
    q = cls()
    results = []

    def get():
        try:
            results.append(q.get())
        except ferry.ShutDown as e:
            results.append(e)

    t = threading.Thread(target=get)
    t.start()
    wait_for_a_waiter(q)
    q.shutdown(immediate=False)
    t.join(10)
    assert not t.is_alive()
    assert len(results) == 1 and isinstance(results[0], ferry.ShutDown)


@kinds
def test_shutdown_pending_put(cls):
    q = cls(1)
    q.put(1)
    results = []

    def put():
        try:
            q.put(2)
            results.append("put")
        except ferry.ShutDown as e:
            results.append(e)

    t = threading.Thread(target=put)
    t.start()
    wait_for_a_waiter(q)
    q.shutdown()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(results[0], ferry.ShutDown)
    assert q.get() == 1


def _shutdown_put_join(cls, immediate):
    q = cls(2)
    q.put("Y")
    go = threading.Barrier(3)
    results = {}

    def putter():
        go.wait()
        try:
            q.put("E")
            results["put"] = "put"
        except ferry.ShutDown:
            results["put"] = "shut down"

    def joiner():
        go.wait()
        q.join()
        results["join"] = True

    threads = [threading.Thread(target=putter), threading.Thread(target=joiner)]
    for t in threads:
        t.start()
    assert unfinished(q) == 1
    q.shutdown(immediate)
    go.wait()
    if immediate:
        with pytest.raises(ferry.ShutDown):
            q.get_nowait()
    else:
        assert q.get() == "Y"
        q.task_done()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert results == {"put": "shut down", "join": True}


@kinds
def test_shutdown_put_join(cls):
    _shutdown_put_join(cls, False)


@kinds
def test_shutdown_immediate_put_join(cls):
    _shutdown_put_join(cls, True)


def _shutdown_get_task_done_join(cls, immediate):
    q = cls(2)
    q.put("Y")
    q.put("D")
    assert unfinished(q) == q.qsize()
    go = threading.Barrier(5)
    results = []
    lock = threading.Lock()

    def getter():
        go.wait()
        try:
            q.get()
            q.task_done()
            ok = True
        except ferry.ShutDown:
            ok = True
        except BaseException:
            ok = False
        with lock:
            results.append(ok)

    def joiner():
        go.wait()
        q.join()
        with lock:
            results.append(True)

    threads = [threading.Thread(target=f) for f in (getter, getter, joiner, joiner)]
    for t in threads:
        t.start()
    go.wait()
    q.shutdown(immediate)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert results == [True] * 4


@kinds
def test_shutdown_get_task_done_join(cls):
    _shutdown_get_task_done_join(cls, False)


@kinds
def test_shutdown_immediate_get_task_done_join(cls):
    _shutdown_get_task_done_join(cls, True)


# From CPython's BaseSimpleQueueTest.


def _feed(q, seq, rnd, sentinel):
    while True:
        try:
            val = seq.pop()
        except IndexError:
            q.put(sentinel)
            return
        q.put(val)
        if rnd.random() > 0.5:
            time.sleep(rnd.random() * 1e-3)


def _consume(q, results, sentinel):
    while True:
        val = q.get()
        if val == sentinel:
            return
        results.append(val)


def _consume_nonblock(q, results, sentinel):
    while True:
        while True:
            try:
                val = q.get(block=False)
            except queue.Empty:
                time.sleep(1e-5)
            else:
                break
        if val == sentinel:
            return
        results.append(val)


def _consume_timeout(q, results, sentinel):
    while True:
        while True:
            try:
                val = q.get(timeout=1e-5)
            except queue.Empty:
                pass
            else:
                break
        if val == sentinel:
            return
        results.append(val)


def _run_threads(n_threads, q, inputs, feed_func, consume_func):
    import random

    results = []
    sentinel = None
    seq = inputs.copy()
    seq.reverse()
    rnd = random.Random(42)
    feeders = [threading.Thread(target=feed_func, args=(q, seq, rnd, sentinel)) for _ in range(n_threads)]
    consumers = [threading.Thread(target=consume_func, args=(q, results, sentinel)) for _ in range(n_threads)]
    for t in feeders + consumers:
        t.start()
    for t in feeders + consumers:
        t.join(60)
        assert not t.is_alive()
    return results


@pytest.mark.parametrize("consume", [_consume, _consume_nonblock, _consume_timeout],
                         ids=["blocking", "nonblock", "timeout"])
def test_many_threads(consume):
    # Test multiple concurrent put() and get()
    n = 500
    q = ferry.SimpleQueue()
    inputs = list(range(n))
    results = _run_threads(4, q, inputs, _feed, consume)
    # Multiple consumers without synchronization append the results in
    # random order
    assert sorted(results) == inputs


def test_simple_queue_is_unbounded_and_fifo():
    q = ferry.SimpleQueue()
    for i in range(100):
        q.put_nowait(i)
    assert q.qsize() == 100
    assert not q.full()
    assert [q.get() for _ in range(100)] == list(range(100))
    assert q.empty()
