"""ferry.ProcessPoolExecutor, after CPython's
Lib/test/test_concurrent_futures (executor.py, test_process_pool.py,
test_shutdown.py, test_wait.py, test_as_completed.py): the tests of
behaviour a user sees — submit, map (timeout, chunksize, an exception,
no result kept alive), wait and as_completed, a worker's traceback,
max_tasks_per_child, shutdown (wait, cancel_futures, racing a map, a
program that ends without it), the context manager, stale references —
and what a pool across machines adds: a worker killed mid-task, whose
future still resolves, once. Where CPython lets a task sleep to stay
unfinished, these wait for a file the test creates (no timing).

Differences, each on purpose: max_workers=0 is allowed (every task runs
in workers that joined by name elsewhere; CPython raises ValueError); a
future cancelled after its task started running still reports
cancelled() (its result is dropped), since the task's start happens in
another process; BrokenProcessPool never happens — a dead worker's task
goes to another; a worker's traceback is the cause as
multiprocessing.pool's RemoteTraceback (CPython's executor has its own
class). Not ported: tests of the executor's private threads and queues,
of other start methods' internals, and Future's own tests (ferry uses
concurrent.futures.Future).
"""

import concurrent.futures
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref

import pytest

import ferry
from concurrent.futures import TimeoutError as FuturesTimeout


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_and_return(t, x):
    time.sleep(t)
    return x


def divide(x):
    return 10 / x


def pid_after(path, t):
    open(path, "w").write(str(os.getpid()))
    time.sleep(t)
    return os.getpid()


def wait_for_file(path, value):
    # A task that finishes when the test says so (bounded: 60 s).
    for _ in range(6000):
        if os.path.exists(path):
            return value
        time.sleep(0.01)
    raise TimeoutError(path)


def raise_error(message):
    raise RuntimeError(message)


class Dummy:
    pass


def make_dummy(_):
    return Dummy()


class MyObject:
    def my_method(self):
        pass


@pytest.fixture(scope="module")
def executor():
    ex = ferry.ProcessPoolExecutor(max_workers=2)
    yield ex
    ex.shutdown(wait=True)


def test_submit(executor):
    future = executor.submit(pow, 2, 8)
    assert future.result() == 256


def test_submit_keyword(executor):
    future = executor.submit(mul, 2, y=8)
    assert future.result() == 16
    future = executor.submit(capture, 1, self=2, fn=4)
    assert future.result() == ((1,), {"self": 2, "fn": 4})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)


def test_map(executor):
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(40), range(40), chunksize=6)) == \
        list(map(pow, range(40), range(40)))


def test_map_exception(executor):
    i = executor.map(divide, [1, 1, 0])
    assert next(i) == 10.0
    assert next(i) == 10.0
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(executor):
    results = []
    with pytest.raises(FuturesTimeout):
        for i in executor.map(sleep_and_return, [0, 0, 6], [1, 2, 3], timeout=1):
            results.append(i)
    assert results == [1, 2]


def test_map_chunksize_must_be_positive(executor):
    with pytest.raises(ValueError):
        executor.map(pow, range(3), range(3), chunksize=0)


def test_no_stale_references(executor):
    # A future's result does not keep the caller's objects alive.
    my_object = MyObject()
    collected = []
    ref = weakref.ref(my_object, lambda _: collected.append(True))
    executor.submit(my_object.my_method).result()
    del my_object
    assert collected == [True] or ref() is None


def test_max_workers_negative():
    with pytest.raises(ValueError):
        ferry.ProcessPoolExecutor(max_workers=-1)


def test_context_manager_shutdown():
    with ferry.ProcessPoolExecutor(max_workers=2) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        e.submit(pow, 2, 2)


def test_cancel_futures():
    ex = ferry.ProcessPoolExecutor(max_workers=1)
    fs = [ex.submit(time.sleep, 0.05) for _ in range(20)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    # Not every one: the first may have run before shutdown.
    assert len(cancelled) >= 15
    others = [f for f in fs if not f.cancelled()]
    assert all(f.done() and f.exception() is None for f in others)


def test_shutdown_without_wait_returns_at_once():
    ex = ferry.ProcessPoolExecutor(max_workers=1)
    f = ex.submit(sleep_and_return, 1.0, 7)
    t = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t < 1.0
    assert f.result(timeout=60) == 7


def test_a_worker_killed_mid_task_and_the_future_still_resolves(tmp_path):
    ex = ferry.ProcessPoolExecutor(max_workers=2)
    try:
        marker = tmp_path / "pid"
        f = ex.submit(pid_after, str(marker), 1.0)
        for _ in range(3000):
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.01)
        first = int(marker.read_text())
        os.kill(first, signal.SIGKILL)
        # Another worker (or the one the pool starts in its place) runs it.
        assert f.result(timeout=60) != first
        assert f.done() and not f.cancelled()
    finally:
        ex.shutdown()


def test_zero_workers_here_and_a_name_to_join():
    ex = ferry.ProcessPoolExecutor(max_workers=0, name=f"exec-{os.getpid()}")
    assert ex.name == f"exec-{os.getpid()}"
    f = ex.submit(pow, 3, 3)
    with pytest.raises(FuturesTimeout):
        f.result(timeout=0.2)  # nobody works for it yet
    ex.shutdown(wait=False, cancel_futures=True)
    assert f.cancelled()
    ferry.connect().call([b"QDROP", f"pool.exec-{os.getpid()}".encode()])


def test_as_completed_and_wait(executor):
    fs = [executor.submit(mul, i, i) for i in range(10)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(fs, timeout=60)) == \
        [i * i for i in range(10)]
    done, not_done = concurrent.futures.wait(fs, timeout=60)
    assert len(done) == 10 and not not_done


# concurrent.futures.wait (test_wait.py). Where CPython lets a task sleep
# to stay unfinished, these wait for a file the test creates at the end.


@pytest.fixture
def gate(tmp_path):
    path = tmp_path / "gate"
    yield str(path)
    path.touch()  # whatever the test did, the gated tasks end


def test_wait_duplicate_futures(executor):
    # bpo-20369
    future = executor.submit(mul, 2, 3)
    done, not_done = concurrent.futures.wait([future, future], timeout=60)
    assert done == {future} and not not_done


def test_wait_first_completed(executor, gate):
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(wait_for_file, gate, 1)
    done, not_done = concurrent.futures.wait([future1, future2], timeout=60,
                                             return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {future1} and not_done == {future2}
    open(gate, "w").close()
    assert future2.result(timeout=60) == 1


def test_wait_first_completed_some_already_completed(executor, gate):
    finished = executor.submit(mul, 2, 2)
    assert finished.result(timeout=60) == 4
    future1 = executor.submit(wait_for_file, gate, 1)
    done, not_done = concurrent.futures.wait([finished, future1], timeout=60,
                                             return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {finished} and not_done == {future1}


def test_wait_first_exception(executor, gate):
    future1 = executor.submit(mul, 2, 21)
    assert future1.result(timeout=60) == 42
    future2 = executor.submit(divide, 0)
    future3 = executor.submit(wait_for_file, gate, 3)
    done, not_done = concurrent.futures.wait([future1, future2, future3], timeout=60,
                                             return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {future1, future2} and not_done == {future3}
    assert isinstance(future2.exception(), ZeroDivisionError)


def test_wait_first_exception_one_already_failed(executor, gate):
    future1 = executor.submit(divide, 0)
    assert isinstance(future1.exception(timeout=60), ZeroDivisionError)
    future2 = executor.submit(wait_for_file, gate, 2)
    done, not_done = concurrent.futures.wait([future1, future2], timeout=60,
                                             return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {future1} and not_done == {future2}


def test_wait_all_completed(executor):
    future1 = executor.submit(divide, 0)
    future2 = executor.submit(mul, 2, 21)
    done, not_done = concurrent.futures.wait([future1, future2], timeout=60,
                                             return_when=concurrent.futures.ALL_COMPLETED)
    assert done == {future1, future2} and not not_done


def test_wait_timeout(executor, gate):
    finished = executor.submit(mul, 6, 7)
    assert finished.result(timeout=60) == 42
    future = executor.submit(wait_for_file, gate, 1)
    done, not_done = concurrent.futures.wait([finished, future], timeout=0.5,
                                             return_when=concurrent.futures.ALL_COMPLETED)
    assert done == {finished} and not_done == {future}


# concurrent.futures.as_completed (test_as_completed.py)


def test_as_completed_no_timeout_and_duplicates(executor):
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    completed = list(concurrent.futures.as_completed([future1, future2, future1], timeout=60))
    assert sorted(completed, key=id) == sorted([future1, future2], key=id), "each once"


def test_as_completed_times_out(executor, gate):
    finished = executor.submit(mul, 1, 1)
    assert finished.result(timeout=60) == 1
    future = executor.submit(wait_for_file, gate, 1)
    completed = []
    with pytest.raises(FuturesTimeout, match=r"1 \(of 2\) futures unfinished"):
        for f in concurrent.futures.as_completed([finished, future], timeout=0.5):
            completed.append(f)
    assert completed == [finished]


def test_free_reference(executor):
    # Issue #14406: the executor keeps no reference to a result handed out.
    for obj in executor.map(make_dummy, range(10)):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


# test_process_pool.py and test_shutdown.py


def test_traceback(executor):
    # The worker's exception, with its traceback's text as the cause.
    future = executor.submit(raise_error, "bad thing")
    exc = future.exception(timeout=60)
    assert type(exc) is RuntimeError and exc.args == ("bad thing",)
    cause = exc.__cause__
    assert cause is not None
    assert "raise RuntimeError(message)" in str(cause)


def test_max_tasks_per_child():
    with ferry.ProcessPoolExecutor(1, max_tasks_per_child=3) as ex:
        pids = [ex.submit(os.getpid).result(timeout=60) for _ in range(3)]
        assert len(set(pids)) == 1, "one worker ran the first three"
        assert ex.submit(os.getpid).result(timeout=60) != pids[0], "a new one the fourth"


def test_shutdown_race():
    # bpo-12456: map, then shut down at once.
    ex = ferry.ProcessPoolExecutor(2)
    results = ex.map(str, [2] * 3)
    ex.shutdown()
    assert list(results) == ["2", "2", "2"]


def test_hang_issue12364():
    ex = ferry.ProcessPoolExecutor(2)
    fs = [ex.submit(time.sleep, 0.01) for _ in range(50)]
    ex.shutdown()
    for f in fs:
        f.result(timeout=60)


def test_run_after_shutdown():
    ex = ferry.ProcessPoolExecutor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)


def test_interpreter_shutdown(tmp_path):
    # A program that submits and ends without shutdown(): its task still
    # runs before the program is done, as with the stdlib.
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import ferry

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg)
            sys.stdout.flush()

        if __name__ == "__main__":
            t = ferry.ProcessPoolExecutor(1)
            t.submit(sleep_and_print, 0.5, "apple")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "apple"
    assert out.stderr == ""


def test_shutdown_with_wait_from_a_callback_raises(tmp_path):
    # The callback runs on the thread that would have to end first (the
    # stdlib's raises RuntimeError too: "cannot join current thread").
    ex = ferry.ProcessPoolExecutor(1)
    errors = []

    def callback(f):
        try:
            ex.shutdown(wait=True)
        except RuntimeError as e:
            errors.append(e)

    gate = tmp_path / "gate"
    f = ex.submit(wait_for_file, str(gate), 8)
    f.add_done_callback(callback)  # before the task can end
    gate.touch()
    assert f.result(timeout=60) == 8
    for _ in range(6000):
        if errors:
            break
        time.sleep(0.01)
    assert errors and "callback" in str(errors[0])
    ex.shutdown()
