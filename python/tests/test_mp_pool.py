"""multiprocessing's pool tests (_TestPool, _TestPoolWorkerErrors and
_TestPoolWorkerLifetime of CPython's Lib/test/_test_multiprocessing.py),
ported to ferry.Pool, and what a pool across machines adds: workers that
join by name (`python -m ferry work`), a worker killed mid-task whose
task another finishes, and 0 workers here.

Differences, each on purpose: Pool(0) is allowed (every task runs in
workers that joined by name; CPython raises ValueError);
test_pool_worker_lifetime waits for the pool to replace its workers (the
pool does, every 50 ms) rather than calling _repopulate_pool();
test_release_task_refs waits for the references to go rather than
sleeping DELTA; timeouts are checked never to be early.
"""

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest

import ferry
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

from test_mp_queue import TIMEOUT1, TIMEOUT2, TimingWrapper, assert_timing_almost_equal


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def raise_large_valuerror(wait):
    time.sleep(wait)
    raise ValueError("x" * 1024**2)


def identity(x):
    return x


class CountedObject:
    n_instances = 0

    def __new__(cls):
        cls.n_instances += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).n_instances -= 1


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


@pytest.fixture(scope="module")
def pool():
    p = ferry.Pool(4)
    yield p
    p.terminate()
    p.join()


def wait_until(what, predicate, timeout=60):
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, f"still waiting for {what}"
        time.sleep(0.01)


# _TestPool


def test_apply(pool):
    assert pool.apply(sqr, (5,)) == sqr(5)
    assert pool.apply(sqr, (), {"x": 3}) == sqr(x=3)


def test_map(pool):
    assert pool.map(sqr, list(range(10))) == list(map(sqr, list(range(10))))
    assert pool.map(sqr, list(range(100)), chunksize=20) == list(map(sqr, list(range(100))))


def test_starmap(pool):
    tuples = list(zip(range(10), range(9, -1, -1)))
    assert pool.starmap(mul, tuples) == list(itertools.starmap(mul, tuples))
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap(mul, tuples, chunksize=20) == list(itertools.starmap(mul, tuples))


def test_starmap_async(pool):
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap_async(mul, tuples).get() == list(itertools.starmap(mul, tuples))


def test_map_async(pool):
    assert pool.map_async(sqr, list(range(10))).get() == list(map(sqr, list(range(10))))


def test_map_async_callbacks(pool):
    call_args = []
    pool.map_async(int, ["1"], callback=call_args.append, error_callback=call_args.append).wait()
    assert len(call_args) == 1 and call_args[0] == [1]
    pool.map_async(int, ["a"], callback=call_args.append, error_callback=call_args.append).wait()
    assert len(call_args) == 2
    assert isinstance(call_args[1], ValueError)


def test_map_unpicklable(pool):
    class A:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")
    with pytest.raises(RuntimeError):
        pool.map(sqr, [A()] * 10)


def test_map_chunksize(pool):
    try:
        pool.map_async(sqr, [], chunksize=1).get(timeout=TIMEOUT1)
    except multiprocessing.TimeoutError:
        pytest.fail("pool.map_async with chunksize stalled on null list")


def test_map_handle_iterable_exception(pool):
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(10, 3), 1)

    class SpecialIterable:
        def __iter__(self):
            return self

        def __next__(self):
            raise SayWhenError

        def __len__(self):
            return 1
    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)


def test_async(pool):
    res = pool.apply_async(sqr, (7, TIMEOUT1))
    get = TimingWrapper(res.get)
    assert get() == 49
    assert_timing_almost_equal(get.elapsed, TIMEOUT1)


def test_async_timeout(pool):
    res = pool.apply_async(sqr, (6, TIMEOUT2 + 1.0))
    get = TimingWrapper(res.get)
    with pytest.raises(multiprocessing.TimeoutError):
        get(timeout=TIMEOUT2)
    assert_timing_almost_equal(get.elapsed, TIMEOUT2)
    assert res.get(timeout=30) == 36


def test_imap(pool):
    it = pool.imap(sqr, list(range(10)))
    assert list(it) == list(map(sqr, list(range(10))))
    it = pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        it.__next__()
    it = pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        it.__next__()


def test_imap_handle_iterable_exception(pool):
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        it.__next__()
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        it.__next__()
    it = pool.imap(sqr, exception_throwing_generator(10, 3), 1)
    for i in range(3):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        it.__next__()
    # SayWhenError seen at start of problematic chunk's results
    it = pool.imap(sqr, exception_throwing_generator(20, 7), 2)
    for i in range(6):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        it.__next__()
    it = pool.imap(sqr, exception_throwing_generator(20, 7), 4)
    for i in range(4):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        it.__next__()


def test_imap_unordered(pool):
    it = pool.imap_unordered(sqr, list(range(1000)))
    assert sorted(it) == list(map(sqr, list(range(1000))))
    it = pool.imap_unordered(sqr, list(range(1000)), chunksize=53)
    assert sorted(it) == list(map(sqr, list(range(1000))))


def test_imap_unordered_handle_iterable_exception(pool):
    it = pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        it.__next__()
    it = pool.imap_unordered(sqr, exception_throwing_generator(10, 3), 1)
    expected_values = list(map(sqr, list(range(10))))
    with pytest.raises(SayWhenError):
        for _ in range(10):
            value = next(it)
            assert value in expected_values
            expected_values.remove(value)
    it = pool.imap_unordered(sqr, exception_throwing_generator(20, 7), 2)
    expected_values = list(map(sqr, list(range(20))))
    with pytest.raises(SayWhenError):
        for _ in range(20):
            value = next(it)
            assert value in expected_values
            expected_values.remove(value)


def test_make_pool():
    with pytest.raises(ValueError):
        ferry.Pool(-1)
    p = ferry.Pool(3)
    try:
        assert len(p._pool) == 3
    finally:
        p.close()
        p.join()


def test_terminate():
    p = ferry.Pool(4)
    p.map_async(time.sleep, [0.1 for _ in range(10000)], chunksize=1)
    p.terminate()
    join = TimingWrapper(p.join)
    join()
    # The pool did not wait for all the tasks.
    assert join.elapsed < 30


def test_empty_iterable():
    p = ferry.Pool(1)
    assert p.map(sqr, []) == []
    assert list(p.imap(sqr, [])) == []
    assert list(p.imap_unordered(sqr, [])) == []
    assert p.map_async(sqr, []).get() == []
    p.close()
    p.join()


def test_context():
    L = list(range(10))
    expected = [sqr(i) for i in L]
    with ferry.Pool(2) as p:
        r = p.map_async(sqr, L)
        assert r.get() == expected
    with pytest.raises(ValueError):
        p.map_async(sqr, L)


def _test_traceback():
    raise RuntimeError(123)  # some comment


def test_traceback(capsys):
    with ferry.Pool(1) as p:
        with pytest.raises(RuntimeError) as raised:
            p.apply(_test_traceback)
    exc = raised.value
    assert type(exc) is RuntimeError and exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in cause.tb
    try:
        raise exc
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err
    # An exception of the caller's own (the iterable's) is not remote.
    with ferry.Pool(1) as p:
        with pytest.raises(SayWhenError) as raised:
            p.map(sqr, exception_throwing_generator(1, -1), 1)
    assert raised.value.__cause__ is None


def _test_wrapped_exception():
    raise RuntimeError("foo")


def test_wrapped_exception():
    with ferry.Pool(1) as p:
        with pytest.raises(RuntimeError):
            p.apply(_test_wrapped_exception)


def test_map_no_failfast():
    t_start = time.monotonic()
    with pytest.raises(ValueError):
        with ferry.Pool(2) as p:
            try:
                p.map(raise_large_valuerror, [0, 1])
            finally:
                time.sleep(0.5)
                p.close()
                p.join()
    assert time.monotonic() - t_start > 0.5


def test_release_task_refs(pool):
    objs = [CountedObject() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    pool.map(identity, objs)
    del objs
    wait_until("the objects released", lambda: set(wr() for wr in refs) == {None})
    # The copies the pool returned were released too.
    wait_until("the copies released", lambda: CountedObject.n_instances == 0)


# _TestPoolWorkerErrors


def raising():
    raise KeyError("key")


def unpickleable_result():
    return lambda: 42


def test_async_error_callback():
    p = ferry.Pool(2)
    scratchpad = [None]

    def errback(exc):
        scratchpad[0] = exc

    res = p.apply_async(raising, error_callback=errback)
    with pytest.raises(KeyError):
        res.get()
    assert isinstance(scratchpad[0], KeyError)
    p.close()
    p.join()


def test_unpickleable_result():
    p = ferry.Pool(2)
    # No pool process is lost to an encoding error.
    for _ in range(20):
        scratchpad = [None]

        def errback(exc):
            scratchpad[0] = exc

        res = p.apply_async(unpickleable_result, error_callback=errback)
        with pytest.raises(MaybeEncodingError):
            res.get()
        wrapped = scratchpad[0]
        assert isinstance(wrapped, MaybeEncodingError)
        assert wrapped.exc is not None and wrapped.value is not None
    p.close()
    p.join()


# _TestPoolWorkerLifetime


def test_pool_worker_lifetime():
    p = ferry.Pool(3, maxtasksperchild=10)
    assert len(p._pool) == 3
    origworkerpids = [w.pid for w in p._pool]
    results = [p.apply_async(sqr, (i,)) for i in range(100)]
    for j, res in enumerate(results):
        assert res.get() == sqr(j)
    wait_until("3 workers alive", lambda: len(p._pool) == 3 and all(w.is_alive() for w in p._pool))
    finalworkerpids = [w.pid for w in p._pool]
    assert None not in origworkerpids and None not in finalworkerpids
    assert sorted(origworkerpids) != sorted(finalworkerpids)
    p.close()
    p.join()


def test_pool_worker_lifetime_early_close():
    p = ferry.Pool(3, maxtasksperchild=1)
    results = [p.apply_async(sqr, (i, 0.3)) for i in range(6)]
    p.close()
    p.join()
    for j, res in enumerate(results):
        assert res.get() == sqr(j)


# Across machines


def _work_cmd(name, jobs=1):
    return [sys.executable, "-m", "ferry", "work", name, "-j", str(jobs)]


def _round_trip(q):
    q.put("through")
    assert q.get(timeout=60) == "through"
    q.task_done()


def test_a_child_forked_while_another_thread_holds_ferrys_locks_finds_them_free():
    # A fork copies a lock another thread holds as held, by a thread the
    # child does not have: the child reinitialises ferry's own locks. (A
    # Pool worker forked as the parent's feeder thread held the registry
    # lock waited on it for ever.)
    name = f"pool-forklocks-{os.getpid()}"
    fork = multiprocessing.get_context("fork")
    q = ferry.JoinableQueue()
    with ferry.Pool(0, name=name) as p:
        first = p.apply_async(sqr, (3,))  # the parent's task feeder is made
        held, release = threading.Event(), threading.Event()

        def hold():
            with ferry.util._private_lock, ferry.util._finisher._cond, q._held_lock, q._handle._lanes_lock:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        try:
            worker = fork.Process(target=ferry.pool.work, args=(name,))
            user = fork.Process(target=_round_trip, args=(q,))
            worker.start()
            user.start()
        finally:
            release.set()
            holder.join()
        try:
            assert first.get(60) == 9
            user.join(60)
            assert user.exitcode == 0
        finally:
            worker.terminate()
            worker.join(60)
            user.kill()
        assert worker.exitcode == 0
    ferry.connect().call([b"QDROP", f"pool.{name}".encode()])


def _ping():
    ferry.connect().call([b"PING"])


def test_children_forked_while_another_thread_connects_find_the_client_free():
    # Another thread opens and drops connections without a pause (on Redis
    # each one registers with the process's heartbeat thread, under a
    # process-wide lock) while this one forks children that connect: a
    # child whose copy of that lock was held would wait on it for ever.
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            _ping()

    churner = threading.Thread(target=churn)
    churner.start()
    fork = multiprocessing.get_context("fork")
    try:
        for _ in range(100):
            child = fork.Process(target=_ping)
            child.start()
            child.join(60)
            assert child.exitcode == 0
    finally:
        stop.set()
        churner.join()


def _record(x, path):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def test_a_sigterm_anywhere_in_a_busy_worker_loses_and_repeats_nothing(tmp_path):
    # SIGTERM lands wherever the worker's loop is — waiting, receiving,
    # running, replying, acknowledging: it leaves after the task under way,
    # and each task runs exactly once across the workers started in turn.
    name = f"pool-terms-{os.getpid()}"
    ran = tmp_path / "ran"
    ran.touch()
    count = lambda: len(ran.read_text().split())  # noqa: E731
    fork = multiprocessing.get_context("fork")
    with ferry.Pool(0, name=name) as p:
        results = [p.apply_async(_record, (i, str(ran))) for i in range(300)]
        for _ in range(15):
            before = count()
            worker = fork.Process(target=ferry.pool.work, args=(name,))
            worker.start()
            wait_until("the worker ran a task", lambda: count() > before)
            os.kill(worker.pid, signal.SIGTERM)
            worker.join(60)
            assert worker.exitcode == 0
        last = fork.Process(target=ferry.pool.work, args=(name,))
        last.start()
        try:
            assert sorted(r.get(60) for r in results) == list(range(300))
        finally:
            last.terminate()
            last.join(60)
        assert last.exitcode == 0
    assert sorted(int(x) for x in ran.read_text().split()) == list(range(300))
    ferry.connect().call([b"QDROP", f"pool.{name}".encode()])


def _slow_pid(x, marker_dir):
    # Records which process ran it, then takes its time.
    open(os.path.join(marker_dir, f"{x}-{os.getpid()}"), "w").close()
    time.sleep(0.5 if x == 0 else 0)
    return (x, os.getpid())


def test_workers_that_join_by_name_share_a_pool_and_a_killed_one_s_task_is_finished_elsewhere(tmp_path):
    name = f"pool-machines-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    # Three "machines": worker groups of their own (process groups), none here.
    machines = [subprocess.Popen(_work_cmd(name, 2), env=env, start_new_session=True) for _ in range(3)]
    try:
        with ferry.Pool(0, name=name) as p:
            first = p.apply_async(_slow_pid, (0, str(tmp_path)))
            # The worker running task 0 dies with its whole machine.
            wait_until("task 0 started", lambda: any(f.name.startswith("0-") for f in tmp_path.iterdir()))
            victim_pid = int(next(f.name for f in tmp_path.iterdir() if f.name.startswith("0-")).split("-")[1])
            victim = next(m for m in machines if _in_group(victim_pid, m.pid))
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            x, pid = first.get(timeout=60)
            assert x == 0 and pid != victim_pid, "finished by another machine's worker"
            results = p.starmap(_slow_pid, [(i, str(tmp_path)) for i in range(1, 41)], chunksize=1)
            assert [x for x, _ in results] == list(range(1, 41))
            ran_on = {pid for _, pid in results}
            assert len(ran_on) >= 2, "the live machines shared the work"
    finally:
        for m in machines:
            if m.poll() is None:
                os.killpg(m.pid, signal.SIGTERM)
        for m in machines:
            m.wait(60)
    ferry.connect().call([b"QDROP", f"pool.{name}".encode()])


def qinfo(queue, field):
    info = ferry.connect().call([b"QINFO", queue.encode()])
    if not isinstance(info, dict):  # RESP2's flat list
        info = dict(zip(info[::2], info[1::2]))
    return info[field.encode()]


def _in_group(pid, pgid):
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def test_python_m_ferry_work_ends_gracefully_on_sigterm(tmp_path):
    name = f"pool-term-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    worker = subprocess.Popen(_work_cmd(name, 1), env=env)
    try:
        with ferry.Pool(0, name=name) as p:
            assert p.apply(sqr, (9,)) == 81
            res = p.apply_async(sqr, (5, 1.0))
            wait_until("the task leased", lambda: qinfo(f"pool.{name}", "leased") == 1)
            worker.send_signal(signal.SIGTERM)
            # The task under way is finished first.
            assert res.get(timeout=60) == 25
            assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    ferry.connect().call([b"QDROP", f"pool.{name}".encode()])
