"""CPython 3.13's Lib/test/test_asyncio/test_queues.py, ported to ferry.aio.

Every test keeps its CPython name and runs, through the mixins CPython
uses, against each ferry.aio class: Queue, LifoQueue, PriorityQueue and
JoinableQueue (leased gets). What changes, and why:

- Where CPython lets a get or put start waiting with `asyncio.sleep(0)`,
  these wait until it does — in this handle's line and at the broker
  (QINFO's waiting counts): the broker is another process, and one turn
  of the loop proves nothing about it.
- Internals are read, not written: `_getters` (this handle's waiting
  gets), `_putters` (its waiting puts) and `_unfinished_tasks` (the
  broker's count) exist; tests that append to `_putters` or assign
  `_unfinished_tasks` reach the same state through the API instead.
- `_queue=[...]` is not in repr (the items are in the broker); the
  orders expected are each class's.

Plain unittest, so it also runs under another interpreter:
FERRY_URL=... python3.13 -m unittest test_aio_cpython (test_py313.py does).
"""

import asyncio
import os
import time
import unittest
from types import GenericAlias

import ferry
import ferry.aio

if hasattr(asyncio, "QueueShutDown"):
    QueueShutDown = asyncio.QueueShutDown
else:
    QueueShutDown = ferry.aio.ShutDown

_conn = []


def info(q) -> dict:
    if not _conn or _conn[0][0] != os.getpid():
        _conn[:] = [(os.getpid(), ferry.connect())]
    return dict(_conn[0][1].info(q.name))


async def until(cond, what="the condition"):
    deadline = time.monotonic() + 60
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def waiting(q, getters=0, putters=0):
    """Until `getters` gets of this handle wait in its line (and its broker
    wait is in place) and `putters` puts wait at the broker."""
    def ok():
        i = info(q)
        return (len(q._getters) >= getters and (getters == 0 or i["waiting_getters"] >= 1)
                and i["waiting_putters"] >= putters)
    await until(ok, f"{getters} waiting gets and {putters} waiting puts")


def ordered(cls, items):
    """The order `cls` hands out `items` put in this order."""
    if cls is ferry.aio.LifoQueue:
        return list(reversed(items))
    if cls is ferry.aio.PriorityQueue:
        return sorted(items)
    return list(items)


class _Base:
    q_class = None

    def make(self, *args, **kwargs):
        q = self.q_class(*args, **kwargs)
        self.addCleanup(q.drop)
        return q


class _QueueBasicTests(_Base):

    async def _test_repr_or_str(self, fn, expect_id):
        q = self.make()
        self.assertTrue(fn(q).startswith('<' + self.q_class.__name__), fn(q))
        id_is_present = hex(id(q)) in fn(q)
        self.assertEqual(expect_id, id_is_present)

        # getters
        q = self.make()
        async with asyncio.TaskGroup() as tg:
            getter = tg.create_task(q.get())
            await waiting(q, getters=1)
            self.assertTrue('_getters[1]' in fn(q))
            q.put_nowait(0)

        self.assertEqual(0, await getter)

        # putters
        q = self.make(maxsize=1)
        async with asyncio.TaskGroup() as tg:
            q.put_nowait(1)
            putter = tg.create_task(q.put(2))
            await waiting(q, putters=1)
            self.assertTrue('_putters[1]' in fn(q))
            q.get_nowait()

        self.assertTrue(putter.done())

        q = self.make()
        q.put_nowait(1)
        self.assertTrue('tasks=1' in fn(q))

    async def test_repr(self):
        await self._test_repr_or_str(repr, True)

    async def test_str(self):
        await self._test_repr_or_str(str, False)

    def test_generic_alias(self):
        q = self.q_class[int]
        self.assertEqual(q.__args__, (int,))
        self.assertIsInstance(q, GenericAlias)

    async def test_empty(self):
        q = self.make()
        self.assertTrue(q.empty())
        await q.put(1)
        self.assertFalse(q.empty())
        self.assertEqual(1, await q.get())
        self.assertTrue(q.empty())

    async def test_full(self):
        q = self.make()
        self.assertFalse(q.full())

        q = self.make(maxsize=1)
        await q.put(1)
        self.assertTrue(q.full())

    async def test_order(self):
        q = self.make()
        for i in [1, 3, 2]:
            await q.put(i)

        items = [await q.get() for _ in range(3)]
        self.assertEqual(ordered(self.q_class, [1, 3, 2]), items)

    async def test_maxsize(self):
        q = self.make(maxsize=2)
        self.assertEqual(2, q.maxsize)
        have_been_put = []

        async def putter():
            for i in range(3):
                await q.put(i)
                have_been_put.append(i)
            return True

        t = asyncio.create_task(putter())
        await waiting(q, putters=1)

        # The putter is blocked after putting two items.
        self.assertEqual([0, 1], have_been_put)
        self.assertEqual(ordered(self.q_class, [0, 1])[0], await q.get())

        # Let the putter resume and put last item.
        await until(lambda: len(have_been_put) == 3)
        self.assertEqual([0, 1, 2], have_been_put)
        rest = [await q.get(), await q.get()]
        self.assertEqual(sorted(rest), sorted(set([0, 1, 2]) - {ordered(self.q_class, [0, 1])[0]}))

        self.assertTrue(t.done())
        self.assertTrue(t.result())


class _QueueGetTests(_Base):

    async def test_blocking_get(self):
        q = self.make()
        q.put_nowait(1)

        self.assertEqual(1, await q.get())

    async def test_get_with_putters(self):
        q = self.make(1)
        await q.put(1)

        # CPython appends a future to q._putters; here a put waits for room.
        waiter = asyncio.create_task(q.put(2))
        await waiting(q, putters=1)

        self.assertEqual(1, await q.get())
        await until(waiter.done)
        self.assertIsNone(waiter.result())

    async def test_blocking_get_wait(self):
        loop = asyncio.get_running_loop()
        q = self.make()
        started = asyncio.Event()
        finished = False

        async def queue_get():
            nonlocal finished
            started.set()
            res = await q.get()
            finished = True
            return res

        queue_get_task = asyncio.create_task(queue_get())
        await started.wait()
        self.assertFalse(finished)
        loop.call_later(0.01, q.put_nowait, 1)
        res = await queue_get_task
        self.assertTrue(finished)
        self.assertEqual(1, res)

    def test_nonblocking_get(self):
        q = self.make()
        q.put_nowait(1)
        self.assertEqual(1, q.get_nowait())

    def test_nonblocking_get_exception(self):
        q = self.make()
        self.assertRaises(asyncio.QueueEmpty, q.get_nowait)

    async def test_get_cancelled_race(self):
        q = self.make()

        t1 = asyncio.create_task(q.get())
        t2 = asyncio.create_task(q.get())

        await waiting(q, getters=2)
        t1.cancel()
        await until(t1.done)
        self.assertTrue(t1.done())
        await q.put('a')
        self.assertEqual('a', await t2)

    async def test_get_with_waiting_putters(self):
        q = self.make(maxsize=1)
        a = asyncio.create_task(q.put('a'))
        await until(a.done)
        asyncio.create_task(q.put('b'))
        self.assertEqual(await q.get(), 'a')
        self.assertEqual(await q.get(), 'b')

    async def test_why_are_getters_waiting(self):
        async def consumer(queue, num_expected):
            for _ in range(num_expected):
                await queue.get()

        async def producer(queue, num_items):
            for i in range(num_items):
                await queue.put(i)

        producer_num_items = 5

        q = self.make(1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(producer(q, producer_num_items))
            tg.create_task(consumer(q, producer_num_items))

    async def test_cancelled_getters_not_being_held_in_self_getters(self):
        queue = self.make(maxsize=5)

        with self.assertRaises(TimeoutError):
            await asyncio.wait_for(queue.get(), 0.1)

        self.assertEqual(len(queue._getters), 0)
        # ... nor at the broker.
        await until(lambda: info(queue)["waiting_getters"] == 0)


class _QueuePutTests(_Base):

    async def test_blocking_put(self):
        q = self.make()

        # No maxsize, won't block.
        await q.put(1)
        self.assertEqual(1, await q.get())

    async def test_blocking_put_wait(self):
        q = self.make(maxsize=1)
        started = asyncio.Event()
        finished = False

        async def queue_put():
            nonlocal finished
            started.set()
            await q.put(1)
            await q.put(2)
            finished = True

        loop = asyncio.get_running_loop()
        loop.call_later(0.01, q.get_nowait)
        queue_put_task = asyncio.create_task(queue_put())
        await started.wait()
        self.assertFalse(finished)
        await queue_put_task
        self.assertTrue(finished)

    def test_nonblocking_put(self):
        q = self.make()
        q.put_nowait(1)
        self.assertEqual(1, q.get_nowait())

    async def test_get_cancel_drop_one_pending_reader(self):
        q = self.make()

        reader = asyncio.create_task(q.get())

        await waiting(q, getters=1)

        q.put_nowait(1)
        q.put_nowait(2)
        reader.cancel()

        try:
            await reader
        except asyncio.CancelledError:
            # try again
            reader = asyncio.create_task(q.get())
            await reader

        result = reader.result()
        # if we get the second, it means the first got dropped!
        self.assertEqual(1, result)

    async def test_get_cancel_drop_many_pending_readers(self):
        q = self.make()

        async with asyncio.TaskGroup() as tg:
            reader1 = tg.create_task(q.get())
            reader2 = tg.create_task(q.get())
            reader3 = tg.create_task(q.get())

            await waiting(q, getters=3)

            q.put_nowait(1)
            q.put_nowait(2)
            reader1.cancel()

            with self.assertRaises(asyncio.CancelledError):
                await reader1

            await reader3

        # It is undefined in which order concurrent readers receive results.
        self.assertEqual({reader2.result(), reader3.result()}, {1, 2})

    async def test_put_cancel_drop(self):
        q = self.make(1)

        q.put_nowait(1)

        # putting a second item in the queue has to block (qsize=1)
        writer = asyncio.create_task(q.put(2))
        await waiting(q, putters=1)

        value1 = q.get_nowait()
        self.assertEqual(value1, 1)

        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            # A cancelled put happened or did not: try again only if not.
            if q.qsize() == 0:
                writer = asyncio.create_task(q.put(2))
                await writer

        value2 = q.get_nowait()
        self.assertEqual(value2, 2)
        self.assertEqual(q.qsize(), 0)

    def test_nonblocking_put_exception(self):
        q = self.make(maxsize=1, )
        q.put_nowait(1)
        self.assertRaises(asyncio.QueueFull, q.put_nowait, 2)

    async def test_float_maxsize(self):
        # asyncio compares qsize() >= 1.3: room for two. ferry's maxsize is
        # a whole count, rounded up the same way.
        q = self.make(maxsize=1.3, )
        q.put_nowait(1)
        q.put_nowait(2)
        self.assertTrue(q.full())
        self.assertRaises(asyncio.QueueFull, q.put_nowait, 3)

        q = self.make(maxsize=1.3, )

        await q.put(1)
        await q.put(2)
        self.assertTrue(q.full())

    async def test_put_cancelled(self):
        q = self.make()

        async def queue_put():
            await q.put(1)
            return True

        t = asyncio.create_task(queue_put())

        self.assertEqual(1, await q.get())
        # The broker acknowledged the put before it handed the item out,
        # but the two replies travel on different pooled connections: the
        # put's may reach this loop a moment after the get's.
        await until(t.done, "the put's reply")
        self.assertTrue(t.result())

    async def test_put_cancelled_race(self):
        q = self.make(maxsize=1)

        put_a = asyncio.create_task(q.put('a'))
        await until(put_a.done)
        put_b = asyncio.create_task(q.put('b'))
        await waiting(q, putters=1)
        put_c = asyncio.create_task(q.put('X'))
        await waiting(q, putters=2)

        self.assertTrue(put_a.done())
        self.assertFalse(put_b.done())

        put_c.cancel()
        await until(put_c.done)
        self.assertTrue(put_c.done())
        self.assertEqual(q.get_nowait(), 'a')
        await until(put_b.done)
        self.assertEqual(q.get_nowait(), 'b')

        await put_b

    async def test_put_with_waiting_getters(self):
        q = self.make()
        t = asyncio.create_task(q.get())
        await waiting(q, getters=1)
        await q.put('a')
        self.assertEqual(await t, 'a')

    async def test_why_are_putters_waiting(self):
        queue = self.make(2)

        async def putter(item):
            await queue.put(item)

        async def getter():
            await waiting(queue, putters=2)
            num = queue.qsize()
            for _ in range(num):
                queue.get_nowait()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(getter())
            tg.create_task(putter(0))
            tg.create_task(putter(1))
            tg.create_task(putter(2))
            tg.create_task(putter(3))

    async def test_cancelled_puts_not_being_held_in_self_putters(self):
        # Full queue.
        queue = self.make(maxsize=1)
        queue.put_nowait(1)

        # Task waiting for space to put an item in the queue.
        put_task = asyncio.create_task(queue.put(1))
        await waiting(queue, putters=1)

        self.assertEqual(len(queue._putters), 1)
        put_task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await put_task
        self.assertEqual(len(queue._putters), 0)
        await until(lambda: info(queue)["waiting_putters"] == 0)

    async def test_cancelled_put_silence_value_error_exception(self):
        # Full Queue.
        queue = self.make(1)
        queue.put_nowait(1)

        # Task waiting for space to put a item in the queue.
        put_task = asyncio.create_task(queue.put(1))
        await waiting(queue, putters=1)

        queue.get_nowait()
        put_task.cancel()

        with self.assertRaises(asyncio.CancelledError):
            await put_task


class _QueueJoinTestMixin(_Base):

    def test_task_done_underflow(self):
        q = self.make()
        self.assertRaises(ValueError, q.task_done)

    async def test_task_done(self):
        q = self.make()
        for i in range(100):
            q.put_nowait(i)

        accumulator = 0

        # Two workers get items from the queue and call task_done after each.
        # Join the queue and assert all items have been processed.
        running = True

        async def worker():
            nonlocal accumulator

            while running:
                item = await q.get()
                accumulator += item
                q.task_done()

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(worker())
                     for index in range(2)]

            await q.join()
            self.assertEqual(sum(range(100)), accumulator)

            # close running generators
            running = False
            for i in range(len(tasks)):
                q.put_nowait(0)

    async def test_join_empty_queue(self):
        q = self.make()

        await q.join()
        await q.join()

    async def test_format(self):
        q = self.make()
        self.assertEqual(q._format(), f'maxsize=0 name={q.name!r}')

        # CPython sets _unfinished_tasks = 2; here two items are put.
        q.put_nowait(1)
        q.put_nowait(2)
        self.assertEqual(q._unfinished_tasks, 2)
        self.assertEqual(q._format(), f'maxsize=0 tasks=2 name={q.name!r}')


class _QueueShutdownTestMixin(_Base):

    def assertRaisesShutdown(self, msg="Didn't appear to shut-down queue"):
        return self.assertRaises(QueueShutDown, msg=msg)

    async def test_format(self):
        q = self.make()
        q.shutdown()
        self.assertEqual(q._format(), f'maxsize=0 shutdown name={q.name!r}')

    async def test_shutdown_empty(self):
        q = self.make()
        loop = asyncio.get_running_loop()
        get_task = loop.create_task(q.get())
        await waiting(q, getters=1)  # want get task pending before shutdown

        q.shutdown(immediate=False)  # unfinished tasks: 0 -> 0

        self.assertEqual(q.qsize(), 0)

        await q.join()

        await until(get_task.done)
        self.assertTrue(get_task.done())
        with self.assertRaisesShutdown():
            await get_task

        with self.assertRaisesShutdown():
            await q.put("data")
        with self.assertRaisesShutdown():
            q.put_nowait("data")

        with self.assertRaisesShutdown():
            await q.get()
        with self.assertRaisesShutdown():
            q.get_nowait()

    async def test_shutdown_nonempty(self):
        q = self.make(maxsize=1)
        loop = asyncio.get_running_loop()

        q.put_nowait("data")
        join_task = loop.create_task(q.join())
        put_task = loop.create_task(q.put("data2"))

        await waiting(q, putters=1)
        self.assertFalse(put_task.done())

        q.shutdown(immediate=False)  # unfinished tasks: 1 -> 1

        self.assertEqual(q.qsize(), 1)

        await until(put_task.done)
        self.assertTrue(put_task.done())
        with self.assertRaisesShutdown():
            await put_task

        self.assertEqual(await q.get(), "data")

        # The join waits at the broker, for the one item unfinished.
        await until(lambda: info(q)["waiting_joiners"] == 1)
        self.assertFalse(join_task.done())

        with self.assertRaisesShutdown():
            await q.put("data")
        with self.assertRaisesShutdown():
            q.put_nowait("data")

        with self.assertRaisesShutdown():
            await q.get()
        with self.assertRaisesShutdown():
            q.get_nowait()

        q.task_done()

        await until(join_task.done)
        self.assertTrue(join_task.done())
        await join_task

        with self.assertRaises(
            ValueError, msg="Didn't appear to mark all tasks done"
        ):
            q.task_done()

    async def test_shutdown_immediate(self):
        q = self.make()
        loop = asyncio.get_running_loop()
        q.put_nowait("data")
        join_task = loop.create_task(q.join())

        q.shutdown(immediate=True)  # unfinished tasks: 1 -> 0

        self.assertEqual(q.qsize(), 0)

        await until(join_task.done)
        self.assertTrue(join_task.done())
        await join_task

        with self.assertRaisesShutdown():
            await q.put("data")
        with self.assertRaisesShutdown():
            q.put_nowait("data")

        with self.assertRaisesShutdown():
            await q.get()
        with self.assertRaisesShutdown():
            q.get_nowait()

        with self.assertRaises(
            ValueError, msg="Didn't appear to mark all tasks done"
        ):
            q.task_done()

    async def test_shutdown_immediate_with_unfinished(self):
        q = self.make()
        loop = asyncio.get_running_loop()
        q.put_nowait("data")
        q.put_nowait("data")
        join_task = loop.create_task(q.join())
        self.assertEqual(await q.get(), "data")

        q.shutdown(immediate=True)  # unfinished tasks: 2 -> 1

        self.assertEqual(q.qsize(), 0)

        await until(lambda: info(q)["waiting_joiners"] == 1)
        self.assertFalse(join_task.done())

        with self.assertRaisesShutdown():
            await q.put("data")
        with self.assertRaisesShutdown():
            q.put_nowait("data")

        with self.assertRaisesShutdown():
            await q.get()
        with self.assertRaisesShutdown():
            q.get_nowait()

        q.task_done()
        with self.assertRaises(
            ValueError, msg="Didn't appear to mark all tasks done"
        ):
            q.task_done()

        await until(join_task.done)
        self.assertTrue(join_task.done())
        await join_task


def _classes():
    """CPython's test classes, once per ferry.aio class."""
    mixins = {
        "QueueBasicTests": _QueueBasicTests,
        "QueueGetTests": _QueueGetTests,
        "QueuePutTests": _QueuePutTests,
        "QueueJoinTests": _QueueJoinTestMixin,
        "QueueShutdownTests": _QueueShutdownTestMixin,
    }
    out = {}
    for cls in (ferry.aio.Queue, ferry.aio.LifoQueue, ferry.aio.PriorityQueue, ferry.aio.JoinableQueue):
        for name, mixin in mixins.items():
            test_name = name.replace("Queue", cls.__name__, 1)
            out[test_name] = type(test_name, (mixin, unittest.IsolatedAsyncioTestCase), {"q_class": cls})
    return out


globals().update(_classes())


if __name__ == '__main__':
    unittest.main()
