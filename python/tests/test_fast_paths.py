"""Fixed windows, prefetch=n and write_behind=n (gets fetched ahead, puts
and task_done written behind): the same answers as the plain calls, fewer
round trips, nothing lost at close, exit or a consumer's death. The
defaults (adaptive) are test_defaults.py's."""

import multiprocessing
import os
import queue
import signal
import threading

import pytest

import ferry


def test_prefetch_serves_in_order_and_counts_what_it_holds():
    q = ferry.JoinableQueue(prefetch=8)
    plain = ferry.JoinableQueue(name=q.name)
    plain.put_many(range(20))
    assert q.get(timeout=5) == 0
    # Eight were fetched; seven wait here and count as ready.
    assert plain.qsize() == 12
    assert q.qsize() == 19
    got = [q.get(timeout=5) for _ in range(19)]
    assert got == list(range(1, 20))
    for _ in range(20):
        q.task_done()
    q.join()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_close_gives_back_prefetched_items():
    for cls in (ferry.JoinableQueue, ferry.Queue):
        q = cls(prefetch=10)
        q.put_many(["a", "b", "c", "d"])
        assert q.get(timeout=5) == "a"
        q.task_done()
        q.close()
        other = cls(name=q.name)
        assert sorted(other.get_many(10, timeout=5)) == ["b", "c", "d"], cls
        for _ in range(3):
            other.task_done()
        other.join()


def test_write_behind_puts_arrive_in_order_and_join_waits_for_them():
    q = ferry.JoinableQueue(write_behind=64)
    for i in range(1000):
        q.put(i)
    reader = ferry.JoinableQueue(name=q.name, prefetch=100)
    got = [reader.get(timeout=5) for _ in range(1000)]
    assert got == list(range(1000))
    done = threading.Event()

    def joiner():
        q.join()
        done.set()

    t = threading.Thread(target=joiner)
    t.start()
    assert not done.wait(0.2), "join() returned with 1000 items unfinished"
    for _ in range(1000):
        reader.task_done()
    reader.flush()
    assert done.wait(10)
    t.join()


def test_write_behind_task_done_is_sent_with_the_next_get():
    q = ferry.JoinableQueue(write_behind=1000, prefetch=4)
    q.put_many(range(8))
    for _ in range(4):
        q.get(timeout=5)
        q.task_done()
    plain = ferry.JoinableQueue(name=q.name)
    assert ferry.connect().info(q.name)  # the queue exists
    unfinished = dict(plain._handle.conn().info(q.name))["unfinished"]
    assert unfinished == 8  # four dones wait in this process
    q.get(timeout=5)  # the next fetch carries them
    unfinished = dict(plain._handle.conn().info(q.name))["unfinished"]
    assert unfinished == 4
    q.task_done()
    for _ in range(3):
        q.get(timeout=5)
        q.task_done()
    q.join()  # sends the rest first


def test_write_behind_errors_surface_on_the_next_put():
    q = ferry.Queue(write_behind=16)
    q.put(1)
    q.flush()
    q.shutdown()
    q.put(2)  # buffered; the feeder's put fails
    with pytest.raises(ferry.ShutDown):
        q.flush()
    with pytest.raises(ValueError):
        q.close()
        q.put(3)


def test_write_behind_priority_queue_keeps_python_order():
    q = ferry.PriorityQueue(write_behind=32)
    for x in [5, 1, 4, 2, 3]:
        q.put(x)
    q.flush()
    assert [q.get(timeout=5) for _ in range(5)] == [1, 2, 3, 4, 5]


def _write_and_exit(q):
    for i in range(500):
        q.put(i)
    # No flush: the exit must send the buffer.


def _write_and_exit_while_collecting(q):
    for i in range(500):
        q.put(i)
    # A collection under way in another thread at exit (its flag is the
    # process's): the exit still sends the buffer, in place.
    ferry.util._collecting = True


def _write_and_cancel(q):
    q.put("maybe")
    q.cancel_join_thread()


@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("target", [_write_and_exit, _write_and_exit_while_collecting])
def test_a_child_that_exits_sends_its_buffered_puts(method, target):
    ctx = multiprocessing.get_context(method)
    q = ferry.JoinableQueue(write_behind=1000)
    p = ctx.Process(target=target, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert q.qsize() == 500
    assert q.get_many(1000, timeout=5) == list(range(500))
    for _ in range(500):
        q.task_done()
    q.join()


def _prefetch_and_die(q, started):
    q.get()
    started.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_consumer_s_prefetched_items_come_back():
    ctx = multiprocessing.get_context("spawn")
    q = ferry.JoinableQueue(prefetch=50)
    q.put_many(range(30))
    started = ctx.Event()
    p = ctx.Process(target=_prefetch_and_die, args=(q, started))
    p.start()
    assert started.wait(30)
    p.join(30)
    plain = ferry.JoinableQueue(name=q.name)
    got = plain.get_many(100, timeout=10)
    while len(got) < 30:
        got += plain.get_many(100, timeout=10)
    assert sorted(got) == list(range(30))
    for _ in got:
        plain.task_done()
    plain.join()


def test_pickling_keeps_the_options():
    import pickle

    q = ferry.JoinableQueue(prefetch=7, write_behind=9)
    r = pickle.loads(pickle.dumps(q))
    assert (r.name, r._prefetch, r._write_behind) == (q.name, 7, 9)


def test_write_behind_task_done_rides_on_a_plain_get():
    q = ferry.JoinableQueue(write_behind=1000)
    q.put_many(["a", "b"])
    assert q.get(timeout=5) == "a"
    q.task_done()
    assert unfinished(q) == 2  # waiting in this process
    assert q.get(timeout=5) == "b"  # carries it
    assert unfinished(q) == 1
    q.task_done()
    q.join()


def unfinished(q):
    return dict(ferry.connect().info(q.name))["unfinished"]


def test_only_fifo_queues_prefetch():
    for cls in (ferry.LifoQueue, ferry.PriorityQueue):
        with pytest.raises(ValueError):
            cls(prefetch=4)
    ferry.PriorityQueue(write_behind=4)  # write-behind keeps each item's key


@pytest.mark.skipif(not os.environ.get("FERRY_TEST_URL", "").startswith("redis://"),
                    reason="one redis-server, without replicas")
def test_write_behind_puts_not_confirmed_are_reported_with_their_count():
    # ?wait=1 on a server with no replica: WAIT confirms nothing. The puts
    # put() returned for are reported — how many — by the next flush(),
    # within about one WAIT per batch (before: a WAIT of 5 s per put, so
    # a batch of 100 kept put() and flush() waiting for 500 s).
    url = os.environ["FERRY_TEST_URL"]
    url += ("&" if "?" in url else "?") + "wait=1"
    q = ferry.JoinableQueue(url=url, write_behind=1000)
    for i in range(100):
        q.put(i)
    with pytest.raises(ferry.WriteBehindError) as e:
        q.flush()
    assert e.value.unsent == 100
    assert "NOREPLICAS" in str(e.value)
    q.flush()  # reported once


def test_task_done_of_an_item_whose_lease_ended_warns_not_raises():
    # The lease runs out while the consumer works (a failover's redelivery
    # does the same): the item goes to another consumer, which finishes
    # it. The first consumer's task_done() is no extra call — it held the
    # item — so it warns rather than raise ValueError in user code, and
    # join() stays exact.
    name = f"lease-ends-{os.getpid()}-{threading.get_ident()}"
    ferry.connect().call([b"QCREATE", name.encode(), b"LEASE", b"300"])
    q = ferry.JoinableQueue(name=name, prefetch=0, write_behind=0)
    q.put("x")
    assert q.get(timeout=5) == "x"
    other = ferry.JoinableQueue(name=name, prefetch=0, write_behind=0)
    assert other.get(timeout=30) == "x"
    other.task_done()
    with pytest.warns(ferry.LeaseLostWarning):
        q.task_done()
    with pytest.raises(ValueError):
        q.task_done()  # now it holds none: too many calls
    q.join()
