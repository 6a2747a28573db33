"""multiprocessing's event and condition tests (_TestEvent and
_TestCondition of CPython's Lib/test/_test_multiprocessing.py), ported
to ferry's classes, with processes and threads sharing one object as
there.

Differences, each on purpose: where CPython sleeps DELTA and then checks
that nobody woke (or that someone did), these wait for what the broker
says — the condition's waiters in line (INFO condition_waiters), a
count reaching its value — never a sleep that hopes; check_invariant
reads private counters of multiprocessing's implementation and is left
out; timeouts are checked never to be early.
"""

import multiprocessing
import os
import signal
import threading
import time

import pytest

import ferry

from test_mp_queue import TIMEOUT1, TIMEOUT2, TimingWrapper, assert_timing_almost_equal

methods = pytest.mark.parametrize("method", ["spawn", "fork"])


def info_field(name):
    text = ferry.connect().call([b"INFO"]).decode()
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    raise KeyError(name)


def wait_until(what, predicate, timeout=30):
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, f"still waiting for {what}"
        time.sleep(0.01)


# _TestEvent


def _set_event(event):
    time.sleep(TIMEOUT2)
    event.set()


@methods
def test_event(method):
    event = ferry.Event()
    wait = TimingWrapper(event.wait)
    assert event.is_set() is False
    assert wait(0.0) is False
    assert_timing_almost_equal(wait.elapsed, 0.0)
    assert wait(TIMEOUT1) is False
    assert_timing_almost_equal(wait.elapsed, TIMEOUT1)
    event.set()
    assert event.is_set() is True
    assert wait() is True
    assert_timing_almost_equal(wait.elapsed, 0.0)
    assert wait(TIMEOUT1) is True
    assert_timing_almost_equal(wait.elapsed, 0.0)
    event.clear()
    assert event.is_set() is False
    p = multiprocessing.get_context(method).Process(target=_set_event, args=(event,))
    p.daemon = True
    p.start()
    assert wait() is True
    p.join()


def test_an_event_wakes_every_waiter_even_if_cleared_at_once():
    event = ferry.Event()
    results = []
    threads = [threading.Thread(target=lambda: results.append(event.wait(30))) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until("three waiters", lambda: info_field("event_waiters") == 3)
    event.set()
    event.clear()
    for t in threads:
        t.join()
    assert results == [True, True, True]
    assert info_field("event_waiters") == 0


# _TestCondition


def _f(cond, sleeping, woken, timeout=None):
    cond.acquire()
    sleeping.release()
    cond.wait(timeout)
    woken.release()
    cond.release()


@methods
def test_notify(method):
    cond = ferry.Condition()
    sleeping = ferry.Semaphore(0)
    woken = ferry.Semaphore(0)
    p = multiprocessing.get_context(method).Process(target=_f, args=(cond, sleeping, woken))
    p.daemon = True
    p.start()
    t = threading.Thread(target=_f, args=(cond, sleeping, woken))
    t.daemon = True
    t.start()
    sleeping.acquire()
    sleeping.acquire()
    wait_until("both in the condition's line", lambda: info_field("condition_waiters") == 2)
    assert woken.get_value() == 0
    with cond:
        cond.notify()
    wait_until("one woken", lambda: woken.get_value() == 1)
    assert info_field("condition_waiters") == 1
    with cond:
        cond.notify()
    wait_until("the other woken", lambda: woken.get_value() == 2)
    p.join()
    t.join()


@methods
def test_notify_all(method):
    ctx = multiprocessing.get_context(method)
    cond = ferry.Condition()
    sleeping = ferry.Semaphore(0)
    woken = ferry.Semaphore(0)
    workers = []
    # Some that time out.
    for _ in range(3):
        p = ctx.Process(target=_f, args=(cond, sleeping, woken, TIMEOUT1))
        p.daemon = True
        p.start()
        t = threading.Thread(target=_f, args=(cond, sleeping, woken, TIMEOUT1))
        t.daemon = True
        t.start()
        workers += [p, t]
    for _ in range(6):
        sleeping.acquire()
    for _ in range(6):
        woken.acquire()
    assert woken.get_value() == 0
    for w in workers:
        w.join()
    # Some more that wait until notified.
    workers = []
    for _ in range(3):
        p = ctx.Process(target=_f, args=(cond, sleeping, woken))
        p.daemon = True
        p.start()
        t = threading.Thread(target=_f, args=(cond, sleeping, woken))
        t.daemon = True
        t.start()
        workers += [p, t]
    for _ in range(6):
        sleeping.acquire()
    wait_until("all six in line", lambda: info_field("condition_waiters") == 6)
    assert woken.get_value() == 0
    with cond:
        cond.notify_all()
    wait_until("all six woken", lambda: woken.get_value() == 6)
    for w in workers:
        w.join()
    assert info_field("conditions") == 0


def test_condition_timeout():
    cond = ferry.Condition()
    wait = TimingWrapper(cond.wait)
    cond.acquire()
    res = wait(TIMEOUT1)
    cond.release()
    assert res is False
    assert_timing_almost_equal(wait.elapsed, TIMEOUT1)


def _waitfor_f(cond, state):
    with cond:
        state.value = 0
        cond.notify()
        result = cond.wait_for(lambda: state.value == 4)
        if not result or state.value != 4:
            raise SystemExit(1)


@methods
def test_waitfor(method):
    ctx = multiprocessing.get_context(method)
    cond = ferry.Condition()
    state = ctx.Value("i", -1)
    p = ctx.Process(target=_waitfor_f, args=(cond, state))
    p.daemon = True
    p.start()
    with cond:
        result = cond.wait_for(lambda: state.value == 0)
        assert result
        assert state.value == 0
    for _ in range(4):
        # The child is in line again before each notify (CPython sleeps
        # 0.01 s and lets a notify fall on nobody now and then).
        wait_until("the child waiting", lambda: info_field("condition_waiters") == 1)
        with cond:
            state.value += 1
            cond.notify()
    p.join(30)
    assert not p.is_alive()
    assert p.exitcode == 0


def _waitfor_timeout_f(cond, state, success, sem):
    sem.release()
    with cond:
        expected = 0.1
        dt = time.monotonic()
        result = cond.wait_for(lambda: state.value == 4, timeout=expected)
        dt = time.monotonic() - dt
        if not result and dt >= expected:
            success.value = True


@methods
def test_waitfor_timeout(method):
    ctx = multiprocessing.get_context(method)
    cond = ferry.Condition()
    state = ctx.Value("i", 0)
    success = ctx.Value("i", False)
    sem = ferry.Semaphore(0)
    p = ctx.Process(target=_waitfor_timeout_f, args=(cond, state, success, sem))
    p.daemon = True
    p.start()
    assert sem.acquire(timeout=30)
    # Only 3 increments: state == 4 is never reached.
    for _ in range(3):
        with cond:
            state.value += 1
            cond.notify()
    p.join(30)
    assert success.value


def _wait_result(c, pid):
    with c:
        c.notify()
    if pid is not None:
        # The parent is back in the condition's line before the signal.
        wait_until("the parent waiting again", lambda: info_field("condition_waiters") == 1)
        os.kill(pid, signal.SIGINT)


def test_wait_result():
    pid = os.getpid()
    c = ferry.Condition()
    with c:
        assert c.wait(0) is False
        assert c.wait(0.1) is False
        p = multiprocessing.get_context("fork").Process(target=_wait_result, args=(c, pid))
        p.start()
        assert c.wait(30) is True
        with pytest.raises(KeyboardInterrupt):
            c.wait(30)
        # Interrupted, it holds the lock again, as Python's does.
        assert c._is_owned()
        p.join()
    assert info_field("condition_waiters") == 0


def test_wait_and_notify_need_the_lock():
    cond = ferry.Condition(ferry.Lock())
    with pytest.raises(RuntimeError):
        cond.wait(0)
    with pytest.raises(RuntimeError):
        cond.notify()
    with cond:
        cond.notify_all()  # nobody waits: nothing happens
        assert cond.wait(0) is False
    with pytest.raises(TypeError):
        ferry.Condition(threading.Lock())
