"""ferry.aio's side of the AsyncPool (see ferry.aio): one pool per
process and broker, each event loop's inbox of replies, and `_call`, the
way a coroutine sends a command and awaits its reply. The queues
(ferry/aio.py) and the locks, semaphores, events, conditions and
barriers (ferry/aio_synchronize.py) are built on it."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import uuid

import ferry
from ferry import util as _util
from ferry._ferry import RESEND_WINDOW_MS, AsyncPool, Connection, Inbox

QueueEmpty = asyncio.QueueEmpty
QueueFull = asyncio.QueueFull

if hasattr(asyncio, "QueueShutDown"):
    class ShutDown(ferry.ShutDown, asyncio.QueueShutDown):
        """The queue was shut down: asyncio.QueueShutDown (3.13+), and
        ferry.ShutDown."""
else:
    ShutDown = ferry.ShutDown


class _Process:
    """This process's way to one broker: its holder token, its AsyncPool,
    and a blocking connection per thread for the calls asyncio makes
    synchronous (put_nowait, get_nowait, qsize, ...), all one holder."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.holder = f"py-{os.getpid()}-{uuid.uuid4().hex}"
        self.pool = AsyncPool(url, self.holder)
        self.local = threading.local()
        # Each put carries a DEDUP key of its own (unless the caller gave
        # one), so that one whose connection was lost — a broker restart,
        # a failover — is sent again safely and goes in once.
        self.puts = itertools.count()

    def resend_key(self) -> list:
        """DEDUP and DEDUPFOR for a put's own key: it counts two minutes
        (a resend comes within the reconnect window), not ten."""
        return [
            b"DEDUP",
            f"{self.holder}-{next(self.puts)}".encode(),
            b"DEDUPFOR",
            str(RESEND_WINDOW_MS).encode(),
        ]

    def conn(self) -> Connection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = Connection(self.url)
            c.set_holder(self.holder)
            self.local.conn = c
        return c


_processes: dict = {}
_processes_lock = _util._fork_safe(threading.Lock())


def _process(url: str) -> _Process:
    key = (os.getpid(), url)  # a forked child makes its own
    p = _processes.get(key)
    if p is None:
        with _processes_lock:
            p = _processes.get(key)
            if p is None:
                if not any(k[0] == key[0] for k in _processes):
                    # Run at exit by multiprocessing's exit function, which
                    # its children run too (atexit does not run in a forked
                    # child), after the queues' own (10), before private
                    # queues are dropped (-1).
                    _util._mp_util.Finalize(None, _at_exit, args=(key[0],), exitpriority=1)
                p = _processes[key] = _Process(url)
    return p


def _translate(e: BaseException) -> BaseException:
    """The exception asyncio code expects for a broker's."""
    if isinstance(e, ferry.ShutDown) and not isinstance(e, ShutDown):
        return ShutDown("queue is shut down")
    if isinstance(e, ferry.Full):
        return QueueFull()
    if isinstance(e, ferry.Empty):
        return QueueEmpty()
    return e


def _settle(fut: asyncio.Future, orphan, value, error) -> None:
    if not fut.cancelled():
        try:
            if error is not None:
                fut.set_exception(_translate(error))
            else:
                fut.set_result(value)
            return
        except RuntimeError:
            pass  # its loop is closed
    # Nobody awaits it: what the broker handed over goes back.
    if orphan is not None and error is None:
        orphan(value)


class _Loop:
    """One event loop's inbox for replies (see AsyncPool): the loop
    watches its socket and settles what came."""

    __slots__ = ("loop", "inbox", "loop_adopted", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.inbox = Inbox()
        loop.add_reader(self.inbox.fileno(), self.drain)

    def drain(self) -> None:
        for fut, orphan, value, error in self.inbox.take():
            _settle(fut, orphan, value, error)

    def adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Its loop ended with replies still to come: `loop` watches for
        them instead, until the last has come."""
        def drain() -> None:
            idle = self.inbox.wait_idle(0)
            self.drain()
            if idle:
                loop.remove_reader(self.inbox.fileno())
                _loops.pop(self.loop, None)
        self.loop_adopted = loop
        loop.add_reader(self.inbox.fileno(), drain)


# This process's loops' inboxes, by loop (ended loops' too, until their
# last replies are settled).
_loops: dict = {}
_last_loop: list = [None, None]


def _forget_parents_loops() -> None:
    # A forked child must not read its parent's inbox sockets (it would
    # take the parent's wakeups); its own loops get their own.
    _loops.clear()
    _last_loop[0] = _last_loop[1] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_loops)


def _inbox(loop: asyncio.AbstractEventLoop) -> Inbox:
    if _last_loop[0] is loop:
        return _last_loop[1]
    entry = _loops.get(loop)
    if entry is None:
        _settle_ended_loops()
        entry = _loops[loop] = _Loop(loop)
    _last_loop[0], _last_loop[1] = loop, entry.inbox
    return entry.inbox


def _settle_ended_loops(timeout: float = 0.0, at_exit: bool = False) -> None:
    """Settles the replies that came for loops that have ended (their
    futures are cancelled: what they hold goes back). Replies still to
    come are watched for by the running loop, if there is one."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, entry in list(_loops.items()):
        if not (loop.is_closed() or (at_exit and not loop.is_running())):
            continue
        idle = entry.inbox.wait_idle(timeout)
        entry.drain()
        if idle:
            del _loops[loop]
            if _last_loop[0] is loop:
                _last_loop[0] = _last_loop[1] = None
        elif running is not None and entry.loop is not running:
            entry.adopt(running)


def _submit(pool: AsyncPool, args: list, wait: bool, orphan=None) -> tuple:
    """Sends a command: its future and ticket."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return fut, pool.submit(args, wait, _inbox(loop), fut, orphan)


async def _call(pool: AsyncPool, args: list, wait: bool = False, orphan=None):
    """Sends a command and awaits its reply. `wait`: it may wait at the
    broker, so it gets a connection of its own and a cancel ends the wait.
    `orphan(value)` takes a successful reply nobody awaits any more (the
    awaiting task was cancelled as it came)."""
    fut, ticket = _submit(pool, args, wait, orphan)
    try:
        return await fut
    except asyncio.CancelledError:
        if wait:
            pool.cancel(ticket)
        _orphan_result(fut, orphan)
        raise


def _orphan_result(fut: asyncio.Future, orphan) -> None:
    """A future settled with a reply whose task was cancelled before it
    ran: the reply goes to `orphan`."""
    if orphan is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
        orphan(fut.result())


def _at_exit(pid: int) -> None:
    """The process is ending: waits still under way are ended, what they
    delivered goes back, and what is being given back is sent (at most a
    second or so), before the connections close."""
    if pid != os.getpid():
        return
    for p in list(_processes.values()):
        p.pool.cancel_all()
    _settle_ended_loops(timeout=1.0, at_exit=True)
    for p in list(_processes.values()):
        p.pool.wait_sent(1.0)
