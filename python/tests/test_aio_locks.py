"""ferry.aio's Semaphore, BoundedSemaphore, Event, Condition and Barrier,
after CPython's Lib/test/test_asyncio/test_locks.py: a first port of its
tests of each class's behaviour (the rest of the file — repr details,
private fields, tests that count loop iterations — is left for issue 27).

What changes, and why: where CPython lets a task start waiting with
`asyncio.sleep(0)`, these wait until the broker says it waits (INFO's
waiter counts) — the broker is another process, and one turn of the loop
proves nothing about it.
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
