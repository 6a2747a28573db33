"""ferry.aio's locks, semaphores, events, conditions and barriers:
asyncio's classes (signatures and exceptions) across processes and
machines, on the same AsyncPool as ferry.aio's queues (ferry/aio_base.py).

Cancellation-safe as the queues are: a cancelled acquire never holds (a
grant that arrives as it is cancelled is given back), a cancelled
Condition.wait() takes the lock again before it raises, and a
notification it was handed goes to the next waiter."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

from ferry import util as _util
from ferry.aio_base import _call, _process

__all__ = ["Lock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier"]


class Lock:
    """asyncio.Lock across processes and machines: `async with lock:`,
    `await acquire()`, `release()`. Fair (first come, first served), and
    released by the broker if the holding process dies. `locked()` says
    whether this handle holds it."""

    def __init__(self, *, name: str | None = None, url: str | None = None) -> None:
        self._name = _util._name(name) or f"py-lock-{uuid.uuid4().hex}"
        self._bname = self._name.encode()
        self._given_url = url
        self._url = _util._url(url)
        self._token: int | None = None

    def __reduce__(self):
        return (_rebuild_lock, (self._name, self._given_url))

    def __repr__(self) -> str:
        state = "locked" if self._token is not None else "unlocked"
        return f"<ferry.aio.Lock name={self._name!r} [{state} here]>"

    def _orphaned(self, token) -> None:
        # Granted as the acquirer was cancelled: not half-taken.
        if isinstance(token, int):
            _process(self._url).pool.send([b"UNLOCK", self._bname, str(token).encode()])

    async def acquire(self) -> bool:
        pool = _process(self._url).pool
        token = await _call(pool, [b"LOCK", self._bname, b"NOWAIT"], orphan=self._orphaned)
        while token is None:
            token = await _call(pool, [b"LOCK", self._bname, b"TIMEOUT", b"0"], wait=True,
                                orphan=self._orphaned)
        self._token = token
        return True

    def release(self) -> None:
        if self._token is None:
            raise RuntimeError("Lock is not acquired.")
        token, self._token = self._token, None
        # Sent on the shared connection, so it goes before any later
        # acquire of this process.
        _process(self._url).pool.send([b"UNLOCK", self._bname, str(token).encode()])

    def locked(self) -> bool:
        return self._token is not None

    async def lost(self) -> bool:
        """Whether this handle acquired the lock and no longer holds it (its
        connection was lost; on Redis its heartbeat was overdue)."""
        if self._token is None:
            return False
        held = await _call(_process(self._url).pool, [b"LOCKED", self._bname, str(self._token).encode()])
        return held != 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc) -> None:
        self.release()


def _rebuild_lock(name, url):
    return Lock(name=name, url=url)


class Semaphore:
    """asyncio.Semaphore across processes and machines: `async with sem:`,
    `await acquire()`, `release()`, `locked()`. Fair (first come, first
    served). A permit this handle acquired goes back by release(), or by
    the broker if the holding process dies — as far as the value the
    semaphore was made with; a handle that acquired none adds one."""

    _bounded = False

    def __init__(self, value: int = 1, *, name: str | None = None, url: str | None = None) -> None:
        value = _util._count(value, "value")
        if value < 0:
            raise ValueError("Semaphore initial value must be >= 0")
        self._value = value
        self._name = _util._name(name) or f"py-sem-{uuid.uuid4().hex}"
        self._bname = self._name.encode()
        self._given_url = url
        self._url = _util._url(url)
        self._tokens: list[int] = []
        self._pid = os.getpid()

    def __reduce__(self):
        return (_rebuild_semaphore, (type(self), self._value, self._name, self._given_url))

    def __repr__(self) -> str:
        return f"<ferry.aio.{type(self).__name__} name={self._name!r} value={self._value}>"

    def _held(self) -> list[int]:
        if self._pid != os.getpid():
            self._tokens, self._pid = [], os.getpid()
        return self._tokens

    def _args(self, *more: bytes) -> list:
        return [self._bname, b"VALUE", str(self._value).encode(), *more]

    def _orphaned(self, token) -> None:
        if isinstance(token, int):
            _process(self._url).pool.send([b"SEMRELEASE", *self._args(b"TOKEN", str(token).encode())])

    async def acquire(self) -> bool:
        pool = _process(self._url).pool
        args = [b"SEMACQUIRE", *self._args()]
        token = await _call(pool, [*args, b"NOWAIT"], orphan=self._orphaned)
        while token is None:
            token = await _call(pool, [*args, b"TIMEOUT", b"0"], wait=True, orphan=self._orphaned)
        held = self._held()
        held.append(token)
        if len(held) > self._value:
            del held[: len(held) - self._value]  # consumed (see ferry.Semaphore)
        return True

    def release(self) -> None:
        # Done when it returns (one round trip, as put_nowait's): locked()
        # and this process's later acquires see it; a BoundedSemaphore
        # learns at once whether it may.
        held = self._held()
        token = held.pop() if held else None
        _process(self._url).conn().sem_release(self._name, self._value, token, self._bounded and token is None)

    def locked(self) -> bool:
        """Whether acquire() would wait now."""
        return _process(self._url).conn().sem_value(self._name, self._value) == 0

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """asyncio.BoundedSemaphore across processes and machines: release()
    raises ValueError rather than exceed the value it was made with."""

    _bounded = True


def _rebuild_semaphore(cls, value, name, url):
    return cls(value, name=name, url=url)


class Event:
    """asyncio.Event across processes and machines: set(), clear(),
    is_set(), `await wait()`. A set wakes every waiter."""

    def __init__(self, *, name: str | None = None, url: str | None = None) -> None:
        self._name = _util._name(name) or f"py-event-{uuid.uuid4().hex}"
        self._bname = self._name.encode()
        self._given_url = url
        self._url = _util._url(url)

    def __reduce__(self):
        return (_rebuild_event, (self._name, self._given_url))

    def __repr__(self) -> str:
        return f"<ferry.aio.Event name={self._name!r} [{'set' if self.is_set() else 'unset'}]>"

    def is_set(self) -> bool:
        return _process(self._url).conn().call([b"EVISSET", self._bname]) == 1

    def set(self) -> None:
        _process(self._url).conn().call([b"EVSET", self._bname])

    def clear(self) -> None:
        _process(self._url).conn().call([b"EVCLEAR", self._bname])

    async def wait(self) -> bool:
        pool = _process(self._url).pool
        while await _call(pool, [b"EVWAIT", self._bname, b"TIMEOUT", b"0"], wait=True) != 1:
            pass  # ended without the event (CLIENT UNBLOCK): wait again
        return True


def _rebuild_event(name, url):
    return Event(name=name, url=url)


class Condition:
    """asyncio.Condition across processes and machines, over a ferry.aio
    Lock (one of its own by default): `async with cond:`, `await wait()`,
    `await wait_for(predicate)`, notify(n), notify_all(), locked(). wait()
    gives the lock back and joins the condition's line in one step at the
    broker, and takes the lock again before it returns or raises."""

    def __init__(self, lock: Lock | None = None, *, name: str | None = None, url: str | None = None) -> None:
        if lock is None:
            lock = Lock(url=url)
        if not isinstance(lock, Lock):
            raise TypeError(f"lock must be a ferry.aio.Lock, not {type(lock).__name__}")
        self._lock = lock
        self._name = _util._name(name) or f"py-cond-{uuid.uuid4().hex}"
        self._bname = self._name.encode()
        self._given_url = url
        self._url = _util._url(url)
        self.acquire = lock.acquire
        self.release = lock.release
        self.locked = lock.locked

    def __reduce__(self):
        return (_rebuild_condition, (self._lock, self._name, self._given_url))

    def __repr__(self) -> str:
        return f"<ferry.aio.Condition name={self._name!r} lock={self._lock!r}>"

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc) -> None:
        self._lock.release()

    def _pass_on(self, notified) -> None:
        # Notified as its waiter was cancelled: the next waiter gets it.
        if notified == 1:
            _process(self._url).pool.send([b"CONDNOTIFY", self._bname, b"COUNT", b"1"])

    async def wait(self) -> bool:
        token = self._lock._token
        if token is None:
            raise RuntimeError("cannot wait on un-acquired lock")
        self._lock._token = None
        pool = _process(self._url).pool
        args = [b"CONDWAIT", self._bname, b"LOCK", self._lock._bname, b"TOKEN", str(token).encode(),
                b"TIMEOUT", b"0"]
        try:
            await _call(pool, args, wait=True, orphan=self._pass_on)
            return True
        finally:
            # The lock is taken again, even if cancelled.
            cancelled = None
            while True:
                try:
                    await self._lock.acquire()
                    break
                except asyncio.CancelledError as e:
                    cancelled = e
            if cancelled is not None:
                raise cancelled

    async def wait_for(self, predicate):
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if self._lock._token is None:
            raise RuntimeError("cannot notify on un-acquired lock")
        n = _util._count(n, "n")
        if n > 0:
            _process(self._url).pool.send([b"CONDNOTIFY", self._bname, b"COUNT", str(n).encode()])

    def notify_all(self) -> None:
        if self._lock._token is None:
            raise RuntimeError("cannot notify on un-acquired lock")
        _process(self._url).pool.send([b"CONDNOTIFY", self._bname, b"ALL"])


def _rebuild_condition(lock, name, url):
    return Condition(lock, name=name, url=url)


class Barrier:
    """asyncio.Barrier across processes and machines: `await wait()` (the
    caller's place in the round, 0 to parties - 1), `await reset()`,
    `await abort()`, parties, n_waiting, broken. A waiter cancelled, or
    whose process dies, breaks the barrier (asyncio.BrokenBarrierError
    for the others), as a dead party would never arrive."""

    def __init__(self, parties: int, *, name: str | None = None, url: str | None = None) -> None:
        parties = _util._count(parties, "parties")
        if parties < 1:
            raise ValueError("parties must be > 0")
        self._parties = parties
        self._name = _util._name(name) or f"py-barrier-{uuid.uuid4().hex}"
        self._bname = self._name.encode()
        self._given_url = url
        self._url = _util._url(url)

    def __reduce__(self):
        return (_rebuild_barrier, (self._parties, self._name, self._given_url))

    def __repr__(self) -> str:
        return f"<ferry.aio.Barrier name={self._name!r} parties={self._parties}>"

    async def __aenter__(self) -> int:
        return await self.wait()

    async def __aexit__(self, *exc) -> None:
        pass

    async def wait(self) -> int:
        pool = _process(self._url).pool
        args = [b"BARWAIT", self._bname, b"PARTIES", str(self._parties).encode(), b"TIMEOUT", b"0"]
        try:
            return await _call(pool, args, wait=True)
        except threading.BrokenBarrierError:
            raise asyncio.BrokenBarrierError from None

    async def reset(self) -> None:
        await _call(_process(self._url).pool, [b"BARRESET", self._bname])

    async def abort(self) -> None:
        await _call(_process(self._url).pool,
                    [b"BARABORT", self._bname, b"PARTIES", str(self._parties).encode()])

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return _process(self._url).conn().call([b"BARINFO", self._bname])[0]

    @property
    def broken(self) -> bool:
        return _process(self._url).conn().call([b"BARINFO", self._bname])[1] == 1


def _rebuild_barrier(parties, name, url):
    return Barrier(parties, name=name, url=url)


# Their home is ferry.aio, where users find them.
for _cls in (Lock, Semaphore, BoundedSemaphore, Event, Condition, Barrier):
    _cls.__module__ = "ferry.aio"
