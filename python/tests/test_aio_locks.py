"""ferry.aio's Lock, Semaphore, BoundedSemaphore, Event, Condition and
Barrier, after CPython's Lib/test/test_asyncio/test_locks.py (LockTests,
EventTests, ConditionTests, SemaphoreTests, BarrierTests).

What changes, and why: where CPython lets a task start waiting with
`asyncio.sleep(0)`, these wait until the broker says it waits (INFO's
waiter counts) — the broker is another process, and one turn of the loop
proves nothing about it. Left out: the repr tests (ferry's reprs name the
primitive; its state is the broker's, not the handle's), tests that read
private fields (`_waiters`, `_count`, `_loop`) and the `loop=` ones.
Differences, each on purpose: a Barrier's waiter that is cancelled
breaks the barrier, as a threading.Barrier's timeout does (asyncio lets
it leave: across processes a party that stops waiting may be gone for
good, and the others would wait for ever); and a barrier has no draining
phase — a round is over when it trips, so a reset then does not touch
the waiters of the next round (test_reset_barrier_while_tasks_draining
and the half-draining ones are not ported).
"""

import asyncio
import pickle

import pytest

import ferry
import ferry.aio


def info_field(name):
    text = ferry.connect().call([b"INFO"]).decode()
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    raise KeyError(name)


async def waiting(field, n):
    """Until the broker counts `n` in `field` (bounded)."""
    for _ in range(3000):
        if info_field(field) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{field} never reached {n}")


def run(coro):
    return asyncio.run(coro)


async def settled(*tasks):
    """Awaits tasks that may have been cancelled."""
    return await asyncio.gather(*tasks, return_exceptions=True)


# Lock (LockTests)


def test_lock_cannot_be_awaited():
    async def main():
        for prim in (ferry.aio.Lock(), ferry.aio.Condition(), ferry.aio.Semaphore(),
                     ferry.aio.BoundedSemaphore(), ferry.aio.Barrier(2)):
            with pytest.raises(TypeError, match="can't be used in 'await' expression"):
                await prim
        assert not ferry.aio.Lock().locked()
    run(main())


def test_lock_acquire_in_order():
    async def main():
        lock = ferry.aio.Lock()
        result = []
        assert await lock.acquire()

        async def c(n):
            if await lock.acquire():
                result.append(n)
            return True

        t1 = asyncio.create_task(c(1))
        await waiting("lock_waiters", 1)
        t2 = asyncio.create_task(c(2))
        await waiting("lock_waiters", 2)
        assert result == []
        lock.release()
        await t1
        assert result == [1]
        t3 = asyncio.create_task(c(3))
        await waiting("lock_waiters", 2)
        lock.release()
        await t2
        assert result == [1, 2]
        lock.release()
        await t3
        assert result == [1, 2, 3]
        assert all(t.result() for t in (t1, t2, t3))
        lock.release()
    run(main())


def test_lock_acquire_cancel():
    async def main():
        lock = ferry.aio.Lock()
        other = ferry.aio.Lock(name=lock._name)
        assert await lock.acquire()
        task = asyncio.create_task(other.acquire())
        asyncio.get_running_loop().call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        await waiting("lock_waiters", 0)
        assert not other.locked()
        lock.release()
    run(main())


def test_lock_cancel_race():
    # A holds the lock, B and C wait. Together: B is cancelled and A
    # releases — the lock goes on to C, not to a cancelled B for ever.
    async def main():
        lock = ferry.aio.Lock()

        async def lockit(blocker):
            await lock.acquire()
            try:
                if blocker is not None:
                    await blocker
            finally:
                lock.release()

        fa = asyncio.get_running_loop().create_future()
        ta = asyncio.create_task(lockit(fa))
        await waiting("locks", 1)
        tb = asyncio.create_task(lockit(None))
        await waiting("lock_waiters", 1)
        tc = asyncio.create_task(lockit(None))
        await waiting("lock_waiters", 2)
        fa.set_result(None)
        tb.cancel()
        await ta
        with pytest.raises(asyncio.CancelledError):
            await tb
        await asyncio.wait_for(tc, 30)
        assert not lock.locked()
        await waiting("locks", 0)
    run(main())


def test_lock_cancel_release_race():
    # bpo-32734: cancel the first waiter and release at once — exactly one
    # of the others takes the lock.
    async def main():
        lock = ferry.aio.Lock()
        counts = {"calls": 0, "locks": 0}

        async def lockit():
            counts["calls"] += 1
            await lock.acquire()
            counts["locks"] += 1

        await lock.acquire()
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(lockit()))
            await waiting("lock_waiters", i + 1)
        t1, t2, t3 = tasks

        def trigger():
            t1.cancel()
            lock.release()

        asyncio.get_running_loop().call_soon(trigger)
        with pytest.raises(asyncio.CancelledError):
            await t1
        await asyncio.wait_for(t2, 30)
        await waiting("lock_waiters", 1)  # t3 still in line
        assert counts == {"calls": 3, "locks": 1}
        t3.cancel()
        await settled(t3)
        assert t3.cancelled()
        lock.release()  # t2's
        await waiting("locks", 0)
    run(main())


def test_lock_finished_waiter_cancelled():
    # The first waiter is handed the lock and cancelled: the second gets it.
    async def main():
        lock = ferry.aio.Lock()
        await lock.acquire()
        tb = asyncio.create_task(lock.acquire())
        await waiting("lock_waiters", 1)
        tc = asyncio.create_task(lock.acquire())
        await waiting("lock_waiters", 2)
        tb.cancel()
        lock.release()
        with pytest.raises(asyncio.CancelledError):
            await tb
        assert await asyncio.wait_for(tc, 30)
        assert lock.locked()
        lock.release()
    run(main())


def test_lock_release_not_acquired_and_context_manager():
    async def main():
        lock = ferry.aio.Lock()
        with pytest.raises(RuntimeError):
            lock.release()
        async with lock:
            assert lock.locked()
        assert not lock.locked()
    run(main())


# Semaphore (SemaphoreTests)


def test_initial_value_zero():
    sem = ferry.aio.Semaphore(0)
    assert sem.locked()


def test_semaphore():
    async def main():
        sem = ferry.aio.Semaphore()
        assert not sem.locked()
        assert await sem.acquire() is True
        assert sem.locked()
        sem.release()
        assert not sem.locked()
    run(main())


def test_semaphore_value():
    with pytest.raises(ValueError):
        ferry.aio.Semaphore(-1)


def test_acquire_in_order_with_waiters():
    async def main():
        sem = ferry.aio.Semaphore(3)
        result = []
        assert await sem.acquire()
        assert await sem.acquire()
        assert not sem.locked()

        async def c(n):
            await sem.acquire()
            result.append(n)
            return True

        await asyncio.create_task(c(1))
        assert result == [1]
        assert sem.locked()
        t2 = asyncio.create_task(c(2))
        await waiting("semaphore_waiters", 1)
        t3 = asyncio.create_task(c(3))
        await waiting("semaphore_waiters", 2)
        sem.release()
        await t2
        sem.release()
        await t3
        assert result == [1, 2, 3], "first come, first served"
        for _ in range(3):
            sem.release()
        assert sem._held() == []
    run(main())


def test_acquire_cancel_never_holds():
    async def main():
        sem = ferry.aio.Semaphore(1)
        other = ferry.aio.Semaphore(1, name=sem._name)
        await sem.acquire()
        t = asyncio.create_task(other.acquire())
        await waiting("semaphore_waiters", 1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await waiting("semaphore_waiters", 0)
        sem.release()
        # The cancelled one holds nothing: the permit is free.
        assert await asyncio.wait_for(other.acquire(), 30)
        other.release()
    run(main())


def test_release_not_acquired():
    async def main():
        sem = ferry.aio.BoundedSemaphore()
        with pytest.raises(ValueError):
            sem.release()
        # An unbounded one takes it: one more permit.
        plain = ferry.aio.Semaphore(0)
        plain.release()
        assert not plain.locked()
    run(main())


def test_context_manager():
    async def main():
        sem = ferry.aio.Semaphore(2)
        async with sem:
            assert not sem.locked()
            async with sem:
                assert sem.locked()
        assert not sem.locked()
    run(main())


def test_semaphore_acquire_cancel_before_awoken():
    async def main():
        sem = ferry.aio.Semaphore(0)
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(sem.acquire()))
            await waiting("semaphore_waiters", i + 1)
        t1, t2, t3, t4 = tasks
        t1.cancel()
        t2.cancel()
        sem.release()
        # The permit skips the two cancelled (handed to one as it was
        # cancelled, it is given back), to the oldest still waiting.
        assert await asyncio.wait_for(t3, 30)
        await waiting("semaphore_waiters", 1)
        assert not t4.done()
        t4.cancel()
        await settled(t1, t2, t4)
        assert t1.cancelled() and t2.cancelled() and t4.cancelled()
        sem.release()  # t3's
    run(main())


def test_semaphore_acquire_hang():
    async def main():
        sem = ferry.aio.Semaphore(0)
        t1 = asyncio.create_task(sem.acquire())
        await waiting("semaphore_waiters", 1)
        t2 = asyncio.create_task(sem.acquire())
        await waiting("semaphore_waiters", 2)
        t1.cancel()
        sem.release()
        assert await asyncio.wait_for(t2, 30)
        assert sem.locked()
        await settled(t1)
        sem.release()
    run(main())


def test_semaphore_acquire_no_hang():
    # A waiter handed the permit and cancelled before it runs gives it back.
    async def main():
        sem = ferry.aio.Semaphore(1)

        async def c1():
            async with sem:
                await waiting("semaphore_waiters", 1)
            t2.cancel()

        async def c2():
            async with sem:
                raise AssertionError("cancelled before it ran")

        t1 = asyncio.create_task(c1())
        t2 = asyncio.create_task(c2())
        r1, r2 = await settled(t1, t2)
        assert r1 is None
        assert isinstance(r2, asyncio.CancelledError)
        await asyncio.wait_for(sem.acquire(), 30)
        sem.release()
    run(main())


def test_semaphore_acquire_fifo_order():
    # Three tasks take a permit of one twice each: c1, c2, c3, c1, c2, c3.
    # (Where CPython sleeps while it holds the permit, a holder here waits
    # until the others are in line: the broker's line is the order.)
    async def main():
        sem = ferry.aio.Semaphore(1)
        result = []
        in_line = iter([2, 2, 2, 2, 1, 0])

        async def coro(tag):
            for round_ in (1, 2):
                await sem.acquire()
                result.append(f"{tag}_{round_}")
                await waiting("semaphore_waiters", next(in_line))
                sem.release()

        tasks = [asyncio.create_task(coro("c1"))]
        for _ in range(3000):
            if result:
                break
            await asyncio.sleep(0.01)
        assert result == ["c1_1"]
        tasks.append(asyncio.create_task(coro("c2")))
        await waiting("semaphore_waiters", 1)
        tasks.append(asyncio.create_task(coro("c3")))
        await asyncio.gather(*tasks)
        assert result == ["c1_1", "c2_1", "c3_1", "c1_2", "c2_2", "c3_2"]
    run(main())


def test_semaphore_acquire_fifo_order_3():
    # A cancelled waiter's turn passes to the next: [2, 3]. (CPython
    # releases twice at once; two grants here reach the loop from the
    # broker in either order, so each release waits for its task.)
    async def main():
        sem = ferry.aio.Semaphore(0)
        result = []

        async def c(n):
            await sem.acquire()
            result.append(n)
            return True

        tasks = []
        for i in (1, 2, 3):
            tasks.append(asyncio.create_task(c(i)))
            await waiting("semaphore_waiters", i)
        tasks[0].cancel()
        await waiting("semaphore_waiters", 2)
        sem.release()
        await asyncio.wait([tasks[1], tasks[2]], timeout=30,
                           return_when=asyncio.FIRST_COMPLETED)
        assert result == [2]
        sem.release()
        await settled(*tasks)
        assert result == [2, 3]
        sem.release()
        sem.release()
    run(main())


def test_a_semaphore_pickles_by_name():
    sem = ferry.aio.BoundedSemaphore(3)
    copy = pickle.loads(pickle.dumps(sem))
    assert (type(copy), copy._name, copy._value) == (ferry.aio.BoundedSemaphore, sem._name, 3)


# Event (EventTests)


def test_event_wait():
    async def main():
        ev = ferry.aio.Event()
        assert not ev.is_set()
        result = []

        async def c(n):
            if await ev.wait():
                result.append(n)

        tasks = [asyncio.create_task(c(i)) for i in (1, 2)]
        await waiting("event_waiters", 2)
        assert result == []
        t3 = asyncio.create_task(c(3))
        await waiting("event_waiters", 3)
        ev.set()
        await asyncio.gather(*tasks, t3)
        assert sorted(result) == [1, 2, 3]
        assert ev.is_set()
        assert await ev.wait() is True, "set: at once"
        ev.clear()
        assert not ev.is_set()
    run(main())


def test_event_wait_cancel():
    async def main():
        ev = ferry.aio.Event()
        t = asyncio.create_task(ev.wait())
        await waiting("event_waiters", 1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await waiting("event_waiters", 0)
    run(main())


def test_clear_with_waiters():
    async def main():
        ev = ferry.aio.Event()
        t = asyncio.create_task(ev.wait())
        await waiting("event_waiters", 1)
        ev.set()
        ev.clear()
        # Woken by the set, it returns True though the event is clear now.
        assert await t is True
        assert not ev.is_set()
    run(main())


def test_event_clear_and_wait_on_set():
    async def main():
        ev = ferry.aio.Event()
        assert not ev.is_set()
        ev.set()
        assert ev.is_set()
        assert await ev.wait() is True
        ev.clear()
        assert not ev.is_set()
    run(main())


# Condition (ConditionTests)


def test_condition_wait_and_notify():
    async def main():
        cond = ferry.aio.Condition()
        result = []

        async def c(n):
            async with cond:
                if await cond.wait():
                    result.append(n)
            return True

        tasks = []
        for i in (1, 2, 3):
            # In line one after another: the broker's order is theirs.
            tasks.append(asyncio.create_task(c(i)))
            await waiting("condition_waiters", i)
        assert result == []
        async with cond:
            cond.notify(1)
        await tasks[0]
        assert result == [1], "the oldest first"
        async with cond:
            cond.notify(1)
            cond.notify(2048)
        await asyncio.gather(*tasks)
        # Both woken; which takes the lock first is theirs to race for.
        assert sorted(result) == [1, 2, 3]
    run(main())


def test_condition_notify_all():
    async def main():
        cond = ferry.aio.Condition()
        result = []

        async def c(n):
            async with cond:
                await cond.wait()
                result.append(n)

        tasks = [asyncio.create_task(c(i)) for i in (1, 2)]
        await waiting("condition_waiters", 2)
        async with cond:
            cond.notify_all()
        await asyncio.gather(*tasks)
        assert sorted(result) == [1, 2]
    run(main())


def test_condition_wait_for():
    async def main():
        cond = ferry.aio.Condition()
        presult = False

        def predicate():
            return presult

        result = []

        async def c():
            async with cond:
                if await cond.wait_for(predicate):
                    result.append(1)

        t = asyncio.create_task(c())
        await waiting("condition_waiters", 1)
        async with cond:
            cond.notify()
        await waiting("condition_waiters", 1)  # the predicate was false: again
        assert result == []
        presult = True
        async with cond:
            cond.notify()
        await t
        assert result == [1]
    run(main())


def test_condition_wait_cancel_takes_the_lock_again():
    async def main():
        cond = ferry.aio.Condition()
        await cond.acquire()
        t = asyncio.create_task(cond.wait())
        await waiting("condition_waiters", 1)
        assert not cond.locked(), "wait gave the lock back"
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert cond.locked(), "and took it again"
        cond.release()
    run(main())


def test_condition_needs_the_lock():
    async def main():
        cond = ferry.aio.Condition()
        with pytest.raises(RuntimeError):
            cond.notify()
        with pytest.raises(RuntimeError):
            await cond.wait()
        with pytest.raises(TypeError):
            ferry.aio.Condition(asyncio.Lock())
    run(main())


def test_condition_wait_cancel_contested():
    # Notified, then cancelled while another holds the lock: it still
    # returns (or raises) holding the lock.
    async def main():
        cond = ferry.aio.Condition()
        await cond.acquire()
        wait_task = asyncio.create_task(cond.wait())
        await waiting("condition_waiters", 1)
        assert not cond.locked()
        await cond.acquire()
        cond.notify()
        loop = asyncio.get_running_loop()
        loop.call_soon(wait_task.cancel)
        loop.call_soon(cond.release)
        await settled(wait_task)
        assert cond.locked()
        cond.release()
    run(main())


def test_condition_wait_cancel_after_notify():
    # bpo-32841: notified, waiting for the lock, cancelled: it raises
    # CancelledError once it has the lock, and leaves it.
    async def main():
        cond = ferry.aio.Condition()
        waited = []

        async def wait_on_cond():
            async with cond:
                waited.append(True)
                await cond.wait()

        waiter = asyncio.create_task(wait_on_cond())
        await waiting("condition_waiters", 1)
        await cond.acquire()
        cond.notify()
        await waiting("lock_waiters", 1)  # woken, it waits for the lock
        waiter.cancel()
        cond.release()
        await settled(waiter)
        assert waiter.cancelled()
        assert waited == [True]
        await waiting("locks", 0)
    run(main())


def test_condition_wait_for_unacquired():
    async def main():
        cond = ferry.aio.Condition()
        # A predicate true at once needs no lock.
        assert await cond.wait_for(lambda: [1, 2, 3]) == [1, 2, 3]
        with pytest.raises(RuntimeError):
            await cond.wait_for(lambda: False)
    run(main())


def test_condition_notify_all_unacquired():
    cond = ferry.aio.Condition()
    with pytest.raises(RuntimeError):
        cond.notify_all()


def test_condition_context_manager_and_explicit_lock():
    async def main():
        cond = ferry.aio.Condition()
        assert not cond.locked()
        async with cond:
            assert cond.locked()
        assert not cond.locked()
        lock = ferry.aio.Lock()
        cond = ferry.aio.Condition(lock)
        assert cond._lock is lock
        async with cond:
            assert lock.locked() and cond.locked()
        assert not lock.locked() and not cond.locked()
        async with lock:
            assert lock.locked() and cond.locked()
        assert not lock.locked() and not cond.locked()
    run(main())


def test_condition_timeout_in_block():
    async def main():
        cond = ferry.aio.Condition()
        async with cond:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(cond.wait(), timeout=0.5)
            assert cond.locked(), "the lock is taken again"
        assert not cond.locked()
    run(main())


# Barrier (BarrierTests)


def test_barrier():
    async def main():
        barrier = ferry.aio.Barrier(3)
        assert barrier.parties == 3 and barrier.n_waiting == 0 and not barrier.broken
        results = await asyncio.gather(*(barrier.wait() for _ in range(3)))
        assert sorted(results) == [0, 1, 2]
        assert barrier.n_waiting == 0 and not barrier.broken
    run(main())


def test_barrier_parties():
    with pytest.raises(ValueError):
        ferry.aio.Barrier(0)
    with pytest.raises(ValueError):
        ferry.aio.Barrier(-4)


def test_barrier_abort_and_reset():
    async def main():
        barrier = ferry.aio.Barrier(3)
        t = asyncio.create_task(barrier.wait())
        await waiting("barrier_waiters", 1)
        assert barrier.n_waiting == 1
        await barrier.abort()
        with pytest.raises(asyncio.BrokenBarrierError):
            await t
        assert barrier.broken
        with pytest.raises(asyncio.BrokenBarrierError):
            await barrier.wait()
        await barrier.reset()
        assert not barrier.broken
    run(main())
    with pytest.raises(asyncio.TimeoutError):
        # A lone party of three waits (no more arrive).
        run(asyncio.wait_for(_lone_party(), 0.2))


async def _lone_party():
    await ferry.aio.Barrier(3).wait()


def test_barrier_reset_breaks_waiters():
    async def main():
        barrier = ferry.aio.Barrier(3)
        tasks = [asyncio.create_task(barrier.wait()) for _ in range(2)]
        await waiting("barrier_waiters", 2)
        await barrier.reset()
        for t in tasks:
            with pytest.raises(asyncio.BrokenBarrierError):
                await t
        assert not barrier.broken
        results = await asyncio.gather(*(barrier.wait() for _ in range(3)))
        assert sorted(results) == [0, 1, 2]
    run(main())


def test_barrier_context_manager():
    async def main():
        barrier = ferry.aio.Barrier(3)
        results = []

        async def coro():
            async with barrier as i:
                results.append(i)

        await asyncio.gather(*(coro() for _ in range(3)))
        assert sorted(results) == [0, 1, 2]
        assert barrier.n_waiting == 0 and not barrier.broken
    run(main())


def test_barrier_filling_one_task_twice():
    async def main():
        barrier = ferry.aio.Barrier(1)
        async with barrier as i:
            assert i == 0
        assert await barrier.wait() == 0
        assert await barrier.wait() == 0
        assert barrier.n_waiting == 0 and not barrier.broken
    run(main())


def test_barrier_filling_tasks_wait_twice_and_return_values():
    async def main():
        n = 5
        barrier = ferry.aio.Barrier(n)
        first, second = [], []

        async def coro():
            async with barrier as i:
                first.append(i)
                async with barrier as j:
                    second.append(j)
                    return j

        res = await asyncio.gather(*(coro() for _ in range(n)))
        assert sorted(first) == sorted(second) == sorted(res) == list(range(n))
        assert barrier.n_waiting == 0 and not barrier.broken
    run(main())


def test_barrier_blocking_tasks_after_a_round():
    # After a round, two tasks wait again at once and three come later
    # (after a barrier of their own): the second round takes all five.
    async def main():
        n, rewait = 5, 2
        barrier = ferry.aio.Barrier(n)
        others = ferry.aio.Barrier(n - rewait)
        left = [rewait]

        async def coro():
            await barrier.wait()
            if left[0] > 0:
                left[0] -= 1
                await barrier.wait()
            else:
                await others.wait()
                await barrier.wait()

        await asyncio.gather(*(coro() for _ in range(n)))
        assert barrier.n_waiting == 0 and not barrier.broken
    run(main())


def test_barrier_reset_and_abort_with_nobody_waiting():
    async def main():
        barrier = ferry.aio.Barrier(1)
        await barrier.reset()
        assert barrier.n_waiting == 0 and not barrier.broken
        await barrier.abort()
        assert barrier.n_waiting == 0 and barrier.broken
    run(main())


def test_barrier_reset_while_tasks_waiting_and_waiting_again():
    async def main():
        n = 5
        barrier = ferry.aio.Barrier(n)
        broke, passed = [], []

        async def coro1():
            try:
                await barrier.wait()
            except asyncio.BrokenBarrierError:
                broke.append(True)
            finally:
                await barrier.wait()
                passed.append(True)

        async def coro2():
            async with barrier:
                passed.append(True)

        tasks = [asyncio.create_task(coro1()) for _ in range(n - 1)]
        await waiting("barrier_waiters", n - 1)
        await barrier.reset()
        await waiting("barrier_waiters", n - 1)  # each waits again
        tasks.append(asyncio.create_task(coro2()))
        await asyncio.gather(*tasks)
        assert not barrier.broken
        assert broke == [True] * (n - 1) and passed == [True] * n
        assert barrier.n_waiting == 0
    run(main())


def test_barrier_abort_when_exception():
    # One party fails between two rounds and aborts: the others, waiting
    # in the second round, get BrokenBarrierError.
    async def main():
        n = 5
        barrier = ferry.aio.Barrier(n)
        results1, results2 = [], []

        async def coro():
            try:
                async with barrier as i:
                    if i == n // 2:
                        raise RuntimeError
                async with barrier:
                    results1.append(True)
            except asyncio.BrokenBarrierError:
                results2.append(True)
            except RuntimeError:
                await waiting("barrier_waiters", n - 1)
                await barrier.abort()

        await asyncio.gather(*(coro() for _ in range(n)))
        assert barrier.broken
        assert results1 == [] and results2 == [True] * (n - 1)
        assert barrier.n_waiting == 0
    run(main())


def test_barrier_abort_when_exception_then_resetting():
    async def main():
        n = 5
        barrier1, barrier2 = ferry.aio.Barrier(n), ferry.aio.Barrier(n)
        results1, results2, results3 = [], [], []

        async def coro():
            try:
                i = await barrier1.wait()
                if i == n // 2:
                    raise RuntimeError
                await barrier1.wait()
                results1.append(True)
            except asyncio.BrokenBarrierError:
                results2.append(True)
            except RuntimeError:
                await waiting("barrier_waiters", n - 1)
                await barrier1.abort()
            # Everyone has left barrier1 before the reset, and nobody
            # enters it again before it.
            i = await barrier2.wait()
            if i == n // 2:
                await barrier1.reset()
            await barrier2.wait()
            await barrier1.wait()
            results3.append(True)

        await asyncio.gather(*(coro() for _ in range(n)))
        assert not barrier1.broken
        assert results1 == [] and results2 == [True] * (n - 1) and results3 == [True] * n
        assert barrier1.n_waiting == 0
    run(main())


def test_a_cancelled_barrier_waiter_breaks_the_barrier():
    # asyncio lets it leave; here it breaks the round, as a threading
    # Barrier's timeout does (see the module's docstring).
    async def main():
        barrier = ferry.aio.Barrier(3)
        t1 = asyncio.create_task(barrier.wait())
        t2 = asyncio.create_task(barrier.wait())
        await waiting("barrier_waiters", 2)
        t1.cancel()
        await settled(t1)
        with pytest.raises(asyncio.BrokenBarrierError):
            await t2
        assert barrier.broken
    run(main())
