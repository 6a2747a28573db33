"""What a queue does with no options: puts written behind (to unbounded
queues) and an adaptive prefetch (a JoinableQueue's gets). The stdlib's
answers within a process, multiprocessing's between processes, nothing
lost or dead-lettered, and join() never waits on a consumer that went on
to other work."""

import multiprocessing
import queue
import threading

import pytest

import ferry


def joins_within(q, seconds):
    """Whether q.join() returns within `seconds` (run in a thread, so that
    a hang fails the test instead of the run)."""
    t = threading.Thread(target=q.join, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def info(q):
    return dict(ferry.connect().info(q.name))


def test_this_process_reads_its_own_puts_at_once():
    q = ferry.Queue()
    q.put(1)
    assert q.get_nowait() == 1
    other = ferry.Queue(name=q.name)  # another handle, same process
    for i in range(100):
        q.put(i)
    assert other.qsize() == 100
    assert other.get_nowait() == 0
    q.put("last")
    other.drop()
    assert info(q) == {}, "the put went before the drop, as it was called"


def test_puts_to_a_bounded_queue_go_straight_to_the_broker():
    q = ferry.Queue(3)
    for i in range(3):
        q.put(i)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q._box[0] is None, "no feeder: a bounded queue's put blocks as the stdlib's does"


def test_a_put_after_this_handle_s_shutdown_raises_at_once():
    q = ferry.Queue()
    q.put(1)
    q.shutdown()
    with pytest.raises(ferry.ShutDown):
        q.put(2)
    assert q.get() == 1


def _put_and_exit(q):
    for i in range(500):
        q.put(i)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_child_s_written_behind_puts_are_sent_when_it_exits(method):
    ctx = multiprocessing.get_context(method)
    q = ferry.JoinableQueue()
    p = ctx.Process(target=_put_and_exit, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert q.qsize() == 500
    got = []
    while len(got) < 500:
        got += q.get_many(500, timeout=5)
    assert got == list(range(500))
    q.task_done_many(500)
    assert joins_within(q, 30)


def _consume_until_fetched_ahead(q, most):
    """Gets and finishes items quickly, at most `most`, until this thread
    holds 8 or more fetched ahead; replies (items finished, items held)."""
    done = 0
    while done < most:
        q.get(timeout=30)
        q.task_done()
        done += 1
        if len(q._handle.lane().fetched) >= 8:
            break
    return done, len(q._handle.lane().fetched)


def _quick_then_stall(q, report, release):
    report.put(_consume_until_fetched_ahead(q, 5000))
    release.wait(60)


def test_a_consumer_that_stops_getting_gives_back_what_it_fetched_ahead():
    ctx = multiprocessing.get_context("fork")
    q = ferry.JoinableQueue()
    # One attempt allowed: an item given back counted as an attempt would
    # be dropped. Items fetched ahead and never handed out are not.
    ferry.connect().call([b"QCONFIG", q.name.encode(), b"MAXATTEMPTS", b"1"])
    q.put_many(range(5000))
    report, release = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_quick_then_stall, args=(q, report, release))
    p.start()
    try:
        done, held = report.get(timeout=60)
        assert held >= 8, "a quick consumer fetches ahead"
        # The stalled consumer's pending task_done()s and the items it
        # holds come back; this process finishes the rest and joins.
        got = set()
        for _ in range(5000 - done):
            got.add(q.get(timeout=30))
            q.task_done()
        assert len(got) == 5000 - done
        assert joins_within(q, 30)
        assert info(q)["dead_lettered"] == 0
    finally:
        release.set()
        p.join(30)
    assert p.exitcode == 0


def _finish_then_wait(q, n, release):
    for _ in range(n):
        q.get(timeout=30)
        q.task_done()
    release.wait(60)


def test_join_returns_while_the_consumer_waits_on_something_else():
    ctx = multiprocessing.get_context("fork")
    q = ferry.JoinableQueue()
    q.put_many(range(300))
    release = ctx.Event()
    p = ctx.Process(target=_finish_then_wait, args=(q, 300, release))
    p.start()
    try:
        assert joins_within(q, 30), "the last task_done() was sent"
    finally:
        release.set()
        p.join(30)
    assert p.exitcode == 0


def test_threads_sharing_a_handle_finish_everything_and_join():
    q = ferry.JoinableQueue()
    seen = []

    def worker():
        while True:
            item = q.get()
            q.task_done()
            if item is None:
                return
            seen.append(item)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(2000):
        q.put(i)
    assert joins_within(q, 60)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join(30)
    assert sorted(seen) == list(range(2000))
    assert joins_within(q, 30)


def test_task_done_without_an_item_still_raises():
    q = ferry.JoinableQueue()
    q.put_many(range(20))
    for _ in range(20):
        q.get(timeout=5)
        q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    assert joins_within(q, 30)


def test_a_thread_that_ends_gives_back_what_it_fetched_ahead():
    q = ferry.JoinableQueue()
    q.put_many(range(3000))
    result = []
    t = threading.Thread(target=lambda: result.append(_consume_until_fetched_ahead(q, 2000)))
    t.start()
    t.join()
    (done, held), = result
    assert held >= 8, "a quick consumer fetches ahead"
    # Its window and its task_done()s were settled when it ended.
    assert len(q._handle.lanes()) <= 1
    for _ in range(3000 - done):
        q.get(timeout=30)
        q.task_done()
    assert joins_within(q, 30)


def _finish_in_threads(q, n):
    def work():
        for _ in range(n):
            q.get(timeout=30)
            q.task_done()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_task_done_s_of_threads_that_ended_are_sent():
    q = ferry.JoinableQueue()
    q.put_many(range(400))
    _finish_in_threads(q, 200)
    assert joins_within(q, 30)


def _square(jobs, results, n):
    for _ in range(n):
        x = jobs.get(timeout=30)
        results.put(x * x)  # written behind ...
        jobs.task_done()  # ... and in the broker before this is


def test_a_put_is_in_the_broker_before_the_task_done_after_it():
    ctx = multiprocessing.get_context("spawn")
    jobs, results = ferry.JoinableQueue(), ferry.Queue()
    jobs.put_many(range(100))
    p = ctx.Process(target=_square, args=(jobs, results, 100))
    p.start()
    assert joins_within(jobs, 60)
    assert sorted(results.get_nowait() for _ in range(100)) == [i * i for i in range(100)]
    p.join(30)
    assert p.exitcode == 0
