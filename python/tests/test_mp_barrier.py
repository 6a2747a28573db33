"""multiprocessing's barrier tests (_TestBarrier of CPython's
Lib/test/_test_multiprocessing.py, itself from test/lock_tests.py),
ported to ferry.Barrier with N - 1 processes (forked) beside the test's
own: each party is a process of its own, as there.

Differences, each on purpose: CPython's late party sleeps 1 s so that the
others' 0.5 s timeouts pass first; here it waits until the barrier is
broken — what it was sleeping for, and no timing to hope on. test_thousand
runs 100 passes, not 1,000 (the test command's time). Added: a party
killed while it waits breaks the barrier for the others, which would
otherwise wait forever.
"""

import multiprocessing
import os
import signal
import threading
import time

import pytest

import ferry

N = 5
DEFAULT_TIMEOUT = 30.0
ctx = multiprocessing.get_context("fork")


class DummyList:
    """A list's append and len, shared between processes (CPython's uses
    a heap buffer and a lock; this, a shared int)."""

    def __init__(self):
        self._n = ctx.Value("i", 0)

    def append(self, _):
        with self._n.get_lock():
            self._n.value += 1

    def __len__(self):
        with self._n.get_lock():
            return self._n.value


def wait_until(what, predicate, timeout=30):
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, f"still waiting for {what}"
        time.sleep(0.005)


def run_threads(f, args):
    """f in N - 1 processes and here; every process must succeed."""
    procs = [ctx.Process(target=f, args=args) for _ in range(N - 1)]
    for p in procs:
        p.start()
    try:
        f(*args)
    finally:
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0] * (N - 1)


@pytest.fixture
def barrier():
    b = ferry.Barrier(N, timeout=DEFAULT_TIMEOUT)
    yield b
    b.abort()
    b.reset()


def multipass(barrier, results, n):
    m = barrier.parties
    assert m == N
    for i in range(n):
        results[0].append(True)
        assert len(results[1]) == i * m
        barrier.wait()
        results[1].append(True)
        assert len(results[0]) == (i + 1) * m
        barrier.wait()
    assert barrier.n_waiting == 0
    assert not barrier.broken


@pytest.mark.parametrize("passes", [1, 10])
def test_barrier(barrier, passes):
    results = [DummyList(), DummyList()]
    run_threads(multipass, (barrier, results, passes))


def _wait_return_f(barrier, queue):
    queue.put(barrier.wait())


def test_wait_return(barrier):
    queue = ferry.Queue()
    run_threads(_wait_return_f, (barrier, queue))
    results = [queue.get(timeout=30) for _ in range(N)]
    assert results.count(0) == 1
    assert sorted(results) == list(range(N))


class AppendTrue:
    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        self.obj.append(True)


def _action_f(barrier, results):
    barrier.wait()
    if len(results) != 1:
        raise RuntimeError


def test_action():
    results = DummyList()
    barrier = ferry.Barrier(N, action=AppendTrue(results))
    run_threads(_action_f, (barrier, results))
    assert len(results) == 1


def _abort_f(barrier, results1, results2):
    try:
        i = barrier.wait()
        if i == N // 2:
            raise RuntimeError
        barrier.wait()
        results1.append(True)
    except threading.BrokenBarrierError:
        results2.append(True)
    except RuntimeError:
        barrier.abort()


def test_abort(barrier):
    results1 = DummyList()
    results2 = DummyList()
    run_threads(_abort_f, (barrier, results1, results2))
    assert len(results1) == 0
    assert len(results2) == N - 1
    assert barrier.broken


def _reset_f(barrier, results1, results2, results3):
    i = barrier.wait()
    if i == N // 2:
        # Wait until the others are all in the barrier.
        wait_until("the others waiting", lambda: barrier.n_waiting >= N - 1)
        barrier.reset()
    else:
        try:
            barrier.wait()
            results1.append(True)
        except threading.BrokenBarrierError:
            results2.append(True)
    # Pass the barrier again.
    barrier.wait()
    results3.append(True)


def test_reset(barrier):
    results1, results2, results3 = DummyList(), DummyList(), DummyList()
    run_threads(_reset_f, (barrier, results1, results2, results3))
    assert len(results1) == 0
    assert len(results2) == N - 1
    assert len(results3) == N


def _abort_and_reset_f(barrier, barrier2, results1, results2, results3):
    try:
        i = barrier.wait()
        if i == N // 2:
            raise RuntimeError
        barrier.wait()
        results1.append(True)
    except threading.BrokenBarrierError:
        results2.append(True)
    except RuntimeError:
        barrier.abort()
    # Synchronize and reset: everyone has left it when it is reset, and
    # nobody enters it before.
    if barrier2.wait() == N // 2:
        barrier.reset()
    barrier2.wait()
    barrier.wait()
    results3.append(True)


def test_abort_and_reset(barrier):
    results1, results2, results3 = DummyList(), DummyList(), DummyList()
    barrier2 = ferry.Barrier(N)
    run_threads(_abort_and_reset_f, (barrier, barrier2, results1, results2, results3))
    assert len(results1) == 0
    assert len(results2) == N - 1
    assert len(results3) == N


def _timeout_f(barrier, results):
    i = barrier.wait()
    if i == N // 2:
        # One party is late: until the others' timeouts broke it.
        wait_until("the barrier broken", lambda: barrier.broken)
    try:
        barrier.wait(0.5)
    except threading.BrokenBarrierError:
        results.append(True)


def test_timeout(barrier):
    results = DummyList()
    run_threads(_timeout_f, (barrier, results))
    assert len(results) == barrier.parties


def _default_timeout_f(barrier, results):
    i = barrier.wait(DEFAULT_TIMEOUT)
    if i == N // 2:
        # Later than the default timeout: until it broke the barrier.
        wait_until("the barrier broken", lambda: barrier.broken)
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        results.append(True)


def test_default_timeout():
    barrier = ferry.Barrier(N, timeout=0.5)
    results = DummyList()
    run_threads(_default_timeout_f, (barrier, results))
    assert len(results) == barrier.parties


def test_single_thread():
    b = ferry.Barrier(1)
    b.wait()
    b.wait()


def _thousand_f(barrier, passes, conn, lock):
    for i in range(passes):
        barrier.wait()
        with lock:
            conn.send(i)


def test_thousand(barrier):
    passes = 100
    lock = ctx.Lock()
    conn, child_conn = ctx.Pipe(False)
    procs = [ctx.Process(target=_thousand_f, args=(barrier, passes, child_conn, lock)) for _ in range(N)]
    for p in procs:
        p.start()
    for i in range(passes):
        for _ in range(N):
            assert conn.recv() == i
    for p in procs:
        p.join()


# Across machines


def _wait_forever(barrier):
    barrier.wait()


def test_a_party_killed_while_it_waits_breaks_the_barrier(barrier):
    p = ctx.Process(target=_wait_forever, args=(barrier,))
    p.start()
    wait_until("the party waiting", lambda: barrier.n_waiting == 1)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    wait_until("the barrier broken", lambda: barrier.broken)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert not barrier.broken and barrier.n_waiting == 0


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        ferry.Barrier(0)
    with pytest.raises(TypeError):
        ferry.Barrier(2.5)
    b = ferry.Barrier(2)
    other = ferry.Barrier(3, name=b._name)
    t = threading.Thread(target=lambda: pytest.raises(threading.BrokenBarrierError, b.wait, 30))
    t.start()
    wait_until("one waiting", lambda: b.n_waiting == 1)
    with pytest.raises(ferry.FerryError, match="exists with PARTIES 2"):
        other.wait(0)
    b.abort()
    t.join()
