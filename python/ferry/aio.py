"""ferry.aio: asyncio's queues, locks, semaphores, events, conditions and
barriers, across processes and machines.

    >>> import asyncio, ferry.aio
    >>> async def main():
    ...     q = ferry.aio.JoinableQueue(name="jobs")
    ...     await q.put({"url": "https://example.org"})
    ...     item = await q.get()          # leased: back to the queue if this process dies
    ...     q.task_done()
    ...     await q.join()
    >>> asyncio.run(main())

The classes have asyncio.Queue's API — `await put/get/join`, `put_nowait`,
`get_nowait` (asyncio.QueueFull / QueueEmpty), `task_done()`, `qsize()`,
`empty()`, `full()`, `maxsize`, `shutdown()` — and the blocking classes'
options (name=, url=, serializer=, prefetch=). A blocking `ferry` queue and
a `ferry.aio` one of the same name are one queue.

How it runs: one `AsyncPool` per process and broker, in Rust on one tokio
thread. Commands that never wait (a put with room, a get that finds an
item, task_done, qsize) share one connection and go out together, so many
coroutines cost one round trip. Gets that must wait line up in their
handle, and one broker wait (QGET COUNT <as many as wait>) serves the
line; a put that waits for room, a join and a lock wait each on a
connection of their own, from the pool's idle ones. All of a process's
connections are one holder (CLIENT HOLDER): a message got on one is
finished on any, and what the process holds comes back when it dies.
Replies reach the loop through a socket it watches; the pool's thread
never takes the GIL. See docs/asyncio.md.

Cancellation loses nothing. A get cancelled while it waits leaves the
line; when nobody is left in it the broker wait ends (CLIENT UNBLOCK). An
item the broker delivered in that moment goes to the next get in line;
with none, a leased one goes back at once (QNACK, to the head of the
queue) and a taken one waits RETURN_AFTER for this handle's next get,
then is put back. A cancelled put happened once or not at all.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import uuid
from types import GenericAlias

import ferry
from ferry import queues as _queues
from ferry import util as _util
from ferry.exceptions import FerryError, LeaseLost, NotLeased
from ferry.ordering import order_key_and_type
from ferry.queues import _SERIALIZERS
from ferry.util import _check_timeout
from ferry._ferry import AsyncPool
from ferry.aio_base import (
    QueueEmpty,
    QueueFull,
    ShutDown,
    _Process,
    _call,
    _process,
    _submit,
    _translate,
)
from ferry.aio_synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, Semaphore

__all__ = [
    "Queue",
    "JoinableQueue",
    "LifoQueue",
    "PriorityQueue",
    "Lock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "ShutDown",
    "QueueEmpty",
    "QueueFull",
    "FerryError",
    "LeaseLost",
    "NotLeased",
]

#: How long (s) an item whose get was cancelled as the broker delivered it
#: waits here for this handle's next get before it is put back.
RETURN_AFTER = 0.05

def _whole_maxsize(maxsize) -> int:
    """asyncio's maxsize (a float too: room while qsize() < maxsize) as the
    broker's whole count."""
    if isinstance(maxsize, float) and not math.isnan(maxsize):
        if math.isinf(maxsize) or maxsize <= 0:
            return 0  # unbounded, as asyncio has it
        return _util._count(math.ceil(maxsize), "maxsize")
    return _util._count(maxsize, "maxsize")


class Queue:
    """asyncio.Queue across processes and machines. Gets TAKE (nothing is
    delivered twice); task_done() and join() work as asyncio's do.

    Queue(maxsize=0, *, name=None, url=None, serializer="pickle",
    prefetch=0): as ferry.Queue — without a name the queue is private to
    this program (it travels with the handle when pickled); with a name
    and no maxsize the handle attaches to the queue as it is.
    prefetch=n: a get that finds nothing fetched here fetches up to n
    items in one round trip (fifo queues only).
    """

    _kind = "fifo"
    _take = True

    def __init__(self, maxsize: int | None = None, *, name: str | None = None, url: str | None = None,
                 serializer: str = "pickle", prefetch: int = 0) -> None:
        if serializer not in _SERIALIZERS:
            raise ValueError(f"serializer must be one of {sorted(_SERIALIZERS)}")
        prefetch = _util._count(prefetch, "prefetch")
        if prefetch < 0:
            raise ValueError("prefetch must be non-negative")
        if prefetch and self._kind != "fifo":
            raise ValueError(f"prefetch keeps fifo order only; a {type(self).__name__} cannot prefetch")
        self._name = _util._name(name) or f"py-{uuid.uuid4().hex}"
        self._qname = self._name.encode()
        if maxsize is None and name is None:
            maxsize = 0
        self._url = _util._url(url)
        self._given_url = url
        self._serializer = serializer
        self._dumps, self._loads = _SERIALIZERS[serializer]
        self._prefetch = int(prefetch)
        self._get_args = [b"QGET", self._qname, b"NOWAIT"] + ([b"TAKE"] if self._take else [])
        if self._prefetch:
            self._get_args[2:2] = [b"COUNT", str(self._prefetch).encode()]
        # Got and not yet task_done(): (task, id).
        self._held: collections.deque = collections.deque()
        # Fetched ahead (prefetch), not yet handed out: (id, payload).
        self._fetched: collections.deque = collections.deque()
        # task_done()s not sent yet, and sent with no reply yet (the same
        # objects all along: the exit finalizer sends what is left).
        self._dones: list = []
        self._dones_unanswered: set = set()
        # Puts waiting for room (tasks), each at the broker.
        self._putters: list = []
        # Gets waiting in line here (futures), served by one broker wait.
        self._waiters: collections.deque = collections.deque()
        self._fetcher: asyncio.Task | None = None
        self._fetch_ticket: int | None = None
        self._dones_sending: set = set()
        self._done_error: BaseException | None = None
        p = self._p()
        # asyncio takes a float maxsize (room while qsize() < maxsize): the
        # broker's is the whole count that means.
        whole = None if maxsize is None else _whole_maxsize(maxsize)
        self._maxsize = _queues._open_queue(self, p.conn(), self._url, self._name, whole, self._kind,
                                          private=name is None)
        if maxsize is not None:
            self._maxsize = maxsize
        _util._mp_util.Finalize(self, _util._finalizer,
                                args=(_settle_at_exit, os.getpid(), self._url, self._qname, self._take,
                                      self._fetched, self._dones, self._dones_unanswered),
                                exitpriority=10)

    def _p(self) -> _Process:
        return _process(self._url)

    def __reduce__(self):
        return (_rebuild, (type(self), self._name, self._given_url, self._serializer, self._prefetch))

    __class_getitem__ = classmethod(GenericAlias)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x} {self._format()}>"

    def __str__(self) -> str:
        return f"<{type(self).__name__} {self._format()}>"

    def _format(self) -> str:
        """As asyncio's: maxsize, this handle's waiting gets and puts, the
        queue's unfinished items (everyone's, from the broker), shutdown;
        and the queue's name."""
        info = dict(self._p().conn().info(self._name))
        result = f"maxsize={self._maxsize!r}"
        if self._getters:
            result += f" _getters[{len(self._getters)}]"
        if self._putters:
            result += f" _putters[{len(self._putters)}]"
        if info.get("unfinished"):
            result += f" tasks={info['unfinished']}"
        if info.get("shutdown"):
            result += " shutdown"
        return result + f" name={self._name!r}"

    @property
    def _getters(self) -> list:
        """This handle's gets waiting in line (asyncio.Queue's _getters)."""
        return [w for w in self._waiters if not w.done()]

    @property
    def _unfinished_tasks(self) -> int:
        """Items got and not yet task_done(), by anyone (asyncio.Queue's
        _unfinished_tasks; the broker's count)."""
        return dict(self._p().conn().info(self._name)).get("unfinished", 0)

    @property
    def name(self) -> str:
        return self._name

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        whole = _whole_maxsize(value)
        self._p().conn().set_maxsize(self._name, max(whole, 0))
        self._maxsize = value

    def qsize(self) -> int:
        return self._p().conn().qsize(self._name) + len(self._fetched)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._maxsize > 0 and self._p().conn().full(self._name)

    # Puts.

    def _key(self, item) -> tuple:
        return (None, None)

    def _put_args(self, item) -> list:
        args = [b"QPUT", self._qname, self._dumps(item)]
        key, keytype = self._key(item)
        if key is not None:
            args += [b"PRIOKEY", key, b"KEYTYPE", keytype]
        return args

    async def put(self, item, *, dedup: str | bytes | None = None) -> None:
        """Puts an item, waiting while the queue is full. With `dedup`, a
        put whose key was used on this queue in the last 10 minutes adds
        nothing (the broker's DEDUP): a crawler's "seen" set, shared by
        every process."""
        args = self._put_args(item)
        if dedup is not None:
            args += [b"DEDUP", dedup.encode() if isinstance(dedup, str) else bytes(dedup)]
        else:
            args += self._p().resend_key()
        pool = self._p().pool
        try:
            await _call(pool, args + [b"NOWAIT"])
        except QueueFull:
            # Cancelled while waiting: the broker ends the wait, and the
            # put happened (its reply came first) or did not.
            putter = asyncio.current_task()
            self._putters.append(putter)
            try:
                await _call(pool, args + [b"TIMEOUT", b"0"], wait=True)
            finally:
                self._putters.remove(putter)

    def put_nowait(self, item) -> None:
        """Puts an item if there is room now, else asyncio.QueueFull."""
        key = self._key(item)
        try:
            self._p().conn().put(self._name, self._dumps(item), False, None, *key)
        except (ferry.Full, ferry.ShutDown) as e:
            raise _translate(e) from None

    async def put_many(self, items) -> None:
        """Puts every item, all or nothing, in one round trip (QPUTMANY);
        waits for room for all."""
        if self._kind != "fifo":
            for item in items:
                await self.put(item)
            return
        args = [b"QPUTMANY", self._qname, b"PAYLOADS"] + [self._dumps(i) for i in items]
        if len(args) > 3:
            await _call(self._p().pool, args, wait=True)

    # Gets.

    def _hand_out(self, msg_id: int, payload: bytes):
        self._held.append((_current_task(), msg_id))
        return self._loads(payload)

    def _orphaned(self, entries) -> None:
        """Messages the broker handed to a get whose coroutine was
        cancelled meanwhile: handed to another waiting get, else given
        back — never lost, never handed out twice."""
        if entries:
            self._deliver([(e[1], e[2]) for e in entries])

    def _deliver(self, items: list, keep: bool = True) -> None:
        """Hands (id, payload) items to the waiting gets, oldest first.
        What is left (their gets were cancelled): kept for the next gets
        with prefetch; else a leased one goes back now (QNACK: to the head
        of the queue), and a taken one is kept for the next get here for
        a moment (RETURN_AFTER), then put back."""
        running = _running()
        if not running:
            # The loop is gone (this runs at exit): nobody waits.
            self._waiters.clear()
        i = 0
        while i < len(items) and self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(items[i])
                i += 1
        if i == len(items):
            return
        rest = items[i:]
        if keep and running and (self._prefetch or self._take):
            self._fetched.extend(rest)
            if not self._prefetch:
                asyncio.get_running_loop().call_later(RETURN_AFTER, self._return_kept)
        else:
            _give_back(self._p().pool, self._qname, self._take, rest, self._restore_key)

    def _return_kept(self) -> None:
        """Puts back the items a cancelled get left here, if no get took
        them meanwhile: other processes may be waiting for them."""
        if self._fetched and not self._prefetch:
            rest = list(self._fetched)
            self._fetched.clear()
            _give_back(self._p().pool, self._qname, self._take, rest, self._restore_key)

    def _restore_key(self, payload: bytes) -> tuple:
        return (None, None)

    async def get(self):
        """Removes and returns an item, waiting while the queue is empty."""
        if self._fetched:
            return self._hand_out(*self._fetched.popleft())
        if self._fetcher is None or self._fetcher.done():
            # Nobody here waits: ask (on the shared connection).
            entries = await _call(self._p().pool, self._get_args, orphan=self._orphaned)
            if entries:
                return self._take_entries(entries)
            if self._fetched:
                return self._hand_out(*self._fetched.popleft())
        # Wait in line here; one broker wait (self._fetch) serves the line.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if self._fetcher is None or self._fetcher.done():
            self._fetcher = loop.create_task(self._fetch())
        try:
            msg_id, payload = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed an item as it was cancelled: to the next in line.
                self._deliver([waiter.result()])
            elif not any(not w.done() for w in self._waiters) and self._fetch_ticket is not None:
                # Nobody is left in line: end the broker wait.
                self._p().pool.cancel(self._fetch_ticket)
            raise
        return self._hand_out(msg_id, payload)

    async def _fetch(self) -> None:
        """The one broker wait of this handle's waiting gets: QGET COUNT
        (as many as wait), handed out in line order."""
        pool = self._p().pool
        while True:
            if any(w.done() for w in self._waiters):
                self._waiters = collections.deque(w for w in self._waiters if not w.done())
            if not self._waiters:
                return
            n = str(max(len(self._waiters), self._prefetch)).encode()
            args = [b"QGET", self._qname, b"COUNT", n, b"TIMEOUT", b"0"]
            if self._take:
                args.append(b"TAKE")
            # The orphan handler only takes a reply that came after the
            # loop closed: this task settles every other one itself.
            fut, self._fetch_ticket = _submit(pool, args, True, self._orphaned)
            try:
                # Shielded: a cancel of this task (the loop ending) ends the
                # broker wait, and the reply is still awaited and settled.
                entries = await asyncio.shield(fut)
            except asyncio.CancelledError:
                pool.cancel(self._fetch_ticket)
                try:
                    entries = await fut
                except BaseException:
                    entries = None
                if entries:
                    self._deliver([(e[1], e[2]) for e in entries], keep=False)
                raise
            except BaseException as e:
                # ShutDown, a lost broker: every waiting get raises it.
                waiters, self._waiters = self._waiters, collections.deque()
                for w in waiters:
                    if not w.done():
                        w.set_exception(e)
                return
            finally:
                self._fetch_ticket = None
            if entries:
                self._deliver([(e[1], e[2]) for e in entries])

    def _take_entries(self, entries):
        first, rest = entries[0], entries[1:]
        if rest:
            self._fetched.extend((e[1], e[2]) for e in rest)
        return self._hand_out(first[1], first[2])

    def get_nowait(self):
        """Removes and returns an item if one is ready, else
        asyncio.QueueEmpty."""
        if self._fetched:
            return self._hand_out(*self._fetched.popleft())
        try:
            msg_id, payload = self._p().conn().get(self._name, False, None, self._take)
        except (ferry.Empty, ferry.ShutDown) as e:
            raise _translate(e) from None
        return self._hand_out(msg_id, payload)

    async def get_many(self, n: int, timeout: float | None = None) -> list:
        """Up to n items in one round trip, waiting at most `timeout`
        (None: forever) for the first; asyncio.QueueEmpty if none came."""
        _check_timeout(True, timeout)
        if n < 1:
            raise ValueError("n must be at least 1")
        items = []
        while self._fetched and len(items) < n:
            items.append(self._hand_out(*self._fetched.popleft()))
        if items:
            return items
        ms = 0 if timeout is None else max(1, int(timeout * 1000 + 0.999))
        args = [b"QGET", self._qname, b"COUNT", str(n).encode(), b"TIMEOUT", str(ms).encode()]
        if self._take:
            args.append(b"TAKE")
        entries = await _call(self._p().pool, args, wait=True, orphan=self._orphaned)
        if not entries:
            raise QueueEmpty()
        return [self._hand_out(e[1], e[2]) for e in entries]

    # Finishing.

    def task_done(self) -> None:
        """Finishes the oldest item the calling task got, else the oldest
        this handle got; ValueError when it holds none. Sent with others
        of this moment in one QDONE; join() waits for it to land, and
        raises what went wrong (LeaseLost)."""
        me = _current_task()
        pick = next((h for h in self._held if h[0] is me), None) if me is not None else None
        if pick is None:
            if not self._held:
                raise ValueError("task_done() called too many times")
            pick = self._held[0]
        self._held.remove(pick)
        if not _running():
            self._finish([pick[1]], self._p().conn())
            return
        if not self._dones:
            asyncio.get_running_loop().call_soon(self._send_dones)
        self._dones.append(pick[1])

    def _finish(self, ids: list, conn) -> None:
        finished = conn.done_many(self._name, ids)
        if finished < len(ids):
            raise LeaseLost(f"{len(ids) - finished} of {len(ids)} task_done() came after the lease was lost; "
                            "the item will be delivered again")

    def _send_dones(self) -> None:
        ids = self._dones[:]
        # Until its reply: a loop that ends first (asyncio.run returning
        # after a last task_done(), cancelling the task before it starts)
        # leaves them to the exit finalizer.
        self._dones_unanswered.update(ids)
        self._dones.clear()
        if ids:
            task = asyncio.get_running_loop().create_task(self._send(ids))
            self._dones_sending.add(task)
            task.add_done_callback(self._dones_sending.discard)

    async def _send(self, ids: list) -> None:
        try:
            finished = await _call(self._p().pool, [b"QDONE", self._qname] + [str(i).encode() for i in ids])
            self._dones_unanswered.difference_update(ids)
            if finished < len(ids):
                self._done_error = LeaseLost(
                    f"{len(ids) - finished} of {len(ids)} task_done() came after the lease was lost; "
                    "the item will be delivered again")
        except BaseException as e:
            self._done_error = e

    async def join(self) -> None:
        """Waits until every item put in the queue (by anyone) was got and
        task_done()."""
        self._send_dones()
        while self._dones_sending:
            await asyncio.gather(*self._dones_sending, return_exceptions=True)
        if self._done_error is not None:
            e, self._done_error = self._done_error, None
            raise e
        await _call(self._p().pool, [b"QJOIN", self._qname], wait=True)

    def shutdown(self, immediate: bool = False) -> None:
        """Python 3.13's shutdown: puts raise ShutDown; gets raise it once
        the queue is empty (at once with immediate=True, which drops what
        is left)."""
        self._p().conn().shutdown(self._name, bool(immediate))

    @property
    def is_shutdown(self) -> bool:
        return dict(self._p().conn().info(self._name)).get("shutdown", 0) == 1

    def drop(self) -> None:
        """Deletes the queue and everything in it, for everyone."""
        self._p().conn().call([b"QDROP", self._qname])

    def purge(self) -> int:
        """Removes every ready item; replies how many."""
        return self._p().conn().call([b"QPURGE", self._qname])

    async def aclose(self) -> None:
        """Finishes this handle's pending task_done()s and gives back the
        items it fetched ahead (prefetch) and did not hand out."""
        if _running():
            self._send_dones()
            while self._dones_sending:
                await asyncio.gather(*self._dones_sending, return_exceptions=True)
        left = list(self._fetched)
        self._fetched.clear()
        if left:
            _give_back(self._p().pool, self._qname, self._take, left, self._restore_key)


def _current_task():
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # called outside a loop


def _running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _give_back(pool: AsyncPool, qname: bytes, take: bool, items: list, restore_key) -> None:
    """Returns messages got but never handed out: a leased one with QNACK
    UNSTARTED (to the head of the queue, as if never delivered: no attempt
    counted), a taken one put again and its take finished. Safe from any
    thread; nothing awaits the replies."""
    for msg_id, payload in items:
        if take:
            args = [b"QPUT", qname, payload]
            key, keytype = restore_key(payload)
            if key is not None:
                args += [b"PRIOKEY", key, b"KEYTYPE", keytype]
            # Waits for room if need be, on a connection of its own; the
            # take is finished only once the put is in.
            pool.send(args + [b"TIMEOUT", b"0"], True, [b"QDONE", qname, str(msg_id).encode()])
        else:
            pool.send([b"QNACK", qname, str(msg_id).encode(), b"UNSTARTED"])


def _settle_at_exit(pid: int, url: str, qname: bytes, take: bool, fetched, dones: list, unanswered: set) -> None:
    """At exit or collection: a handle's task_done()s its loop did not get
    to send (or to see answered: one sent twice is ignored) are sent, and
    the items it fetched ahead and did not hand out go back as _give_back
    returns them — blocking, so that it is done before the process ends
    (only fifo queues prefetch: no priority key to restore)."""
    if pid != os.getpid():
        return
    finished = list(unanswered) + dones
    unanswered.clear()
    dones.clear()
    items = list(fetched)
    fetched.clear()
    if not finished and not items:
        return
    try:
        conn = _process(url).conn()
        name = qname.decode()
        if take:
            for msg_id, payload in items:
                conn.put(name, payload, True, None)
                finished.append(msg_id)
            items = []
        conn.settle(name, finished, [msg_id for msg_id, _ in items])
    except (FerryError, OSError):
        pass  # the broker is gone; leased items come back by themselves


def _rebuild(cls, name, url, serializer, prefetch=0):
    return cls(None, name=name, url=url, serializer=serializer, prefetch=prefetch)


class JoinableQueue(Queue):
    """A Queue whose gets are leased: an item whose process dies before
    task_done() is delivered again, so join() never hangs on a dead
    consumer. (Every asyncio queue has task_done and join; this one also
    survives its consumers.)"""

    _take = False


class LifoQueue(Queue):
    """asyncio.LifoQueue: the newest item first."""

    _kind = "lifo"


class PriorityQueue(Queue):
    """asyncio.PriorityQueue: the least item first, ordered as
    ferry.PriorityQueue orders them (numbers exactly, str, bytes, tuples,
    @dataclass(order=True)); TypeError for an item the queue's items could
    not be compared with."""

    _kind = "priority"

    def _key(self, item) -> tuple:
        return order_key_and_type(item)

    def _restore_key(self, payload: bytes) -> tuple:
        return order_key_and_type(self._loads(payload))
