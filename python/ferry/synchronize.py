"""multiprocessing's Lock, RLock, Semaphore, BoundedSemaphore, Event,
Condition and Barrier across processes and machines."""

from __future__ import annotations

import os
import threading
import time
import uuid

from ferry.exceptions import LockLost
from ferry.lanes import _Handle
from ferry.util import _count, _name, _sync_puts


class Lock:
    """multiprocessing.Lock across processes and machines: acquire(block,
    timeout), release(), and a context manager. Released by the broker if
    the holder's connection dies (on Redis: once its process's heartbeat
    is overdue). `lost` says whether a lock this handle acquired is no
    longer its own; release() of such a lock raises LockLost."""

    def __init__(self, *, name: str | None = None, url: str | None = None) -> None:
        self._name = _name(name) or f"py-lock-{uuid.uuid4().hex}"
        self._url = url
        self._handle = _Handle(url)
        self._token: int | None = None

    def __reduce__(self):
        return (_rebuild_lock, (self._name, self._url))

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if timeout is not None and timeout < 0:
            timeout = 0  # multiprocessing.Lock: a negative timeout tries once
        _sync_puts()
        token = self._handle.conn().lock(self._name, bool(block), timeout)
        if token is None:
            return False
        self._token = token
        return True

    @property
    def lost(self) -> bool:
        """Whether this handle acquired the lock and no longer holds it (it
        asks the broker): a holder checks before a write the lock guards."""
        return self._token is not None and not self._handle.conn().lock_held(self._name, self._token)

    @property
    def token(self) -> int | None:
        """The fencing token of this handle's grant (larger than any
        before it), or None: pass it to the resource the lock guards."""
        return self._token

    def release(self) -> None:
        _sync_puts()
        if self._token is None:
            raise ValueError("release() of an unlocked lock")
        token, self._token = self._token, None
        if not self._handle.conn().unlock(self._name, token):
            raise LockLost(f"lock {self._name!r} (token {token}) was lost before release(): "
                           "its connection or heartbeat was lost, and another may have held it")

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _rebuild_lock(name, url):
    return Lock(name=name, url=url)


class RLock:
    """multiprocessing.RLock across processes and machines: the thread
    that holds it may acquire it again, and releases it as many times.
    The broker holds one Lock for it (given back if the holder's
    connection dies, as a Lock's); the recursion is counted here, by the
    holding thread."""

    def __init__(self, *, name: str | None = None, url: str | None = None) -> None:
        self._lock = Lock(name=_name(name) or f"py-rlock-{uuid.uuid4().hex}", url=url)
        self._owner: tuple[int, int] | None = None
        self._count = 0

    def __reduce__(self):
        return (_rebuild_rlock, (self._lock._name, self._lock._url))

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        me = (os.getpid(), threading.get_ident())
        if self._owner == me:
            self._count += 1
            return True
        if not self._lock.acquire(block, timeout):
            return False
        self._owner, self._count = me, 1
        return True

    def release(self) -> None:
        if self._owner != (os.getpid(), threading.get_ident()):
            raise AssertionError("attempt to release recursive lock not owned by thread")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._lock.release()

    @property
    def token(self) -> int | None:
        """The fencing token of the broker's grant while this process holds
        it, or None."""
        return self._lock.token

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        owner = "None" if self._owner is None else f"{self._owner[0]}|{self._owner[1]}"
        return f"<{type(self).__name__}({self._lock._name}, {owner}, {self._count})>"


def _rebuild_rlock(name, url):
    return RLock(name=name, url=url)


class Semaphore:
    """multiprocessing.Semaphore across processes and machines:
    acquire(block, timeout), release() from any process, get_value(), and
    a context manager. Waiters are served first come, first served. A
    permit this handle acquired goes back by release(); if its holder's
    connection dies first, the broker gives it back — as far as the value
    the semaphore was made with (a semaphore used as a signal, made with
    0, does not hand a consumed signal out again, and one that a release
    from elsewhere answered — a bounded buffer's slot — is not held any
    more). Handles of one name must agree on the value."""

    _bounded = False

    def __init__(self, value: int = 1, *, name: str | None = None, url: str | None = None) -> None:
        value = _count(value, "value")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._value = value
        self._name = _name(name) or f"py-sem-{uuid.uuid4().hex}"
        self._url = url
        self._handle = _Handle(url)
        # The tokens of the permits this handle holds in this process
        # (a forked child inherits the list, not the permits), last last.
        self._tokens: list[int] = []
        self._pid = os.getpid()

    def __reduce__(self):
        return (_rebuild_semaphore, (type(self), self._value, self._name, self._url))

    def _held(self) -> list[int]:
        if self._pid != os.getpid():
            self._tokens, self._pid = [], os.getpid()
        return self._tokens

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if timeout is not None and timeout < 0:
            timeout = 0  # as multiprocessing: a negative timeout tries once
        _sync_puts()
        held = self._held()
        token = self._handle.conn().sem_acquire(self._name, self._value, bool(block), timeout)
        if token is None:
            return False
        held.append(token)
        if len(held) > self._value:
            # More taken here than the value: the oldest were consumed, as
            # a signal's or a bounded buffer's are; the broker retires
            # them as releases answer them.
            del held[: len(held) - self._value]
        return True

    def release(self) -> None:
        """Gives back a permit this handle holds, or (if it holds none:
        another process's release, a signal) adds one. A
        BoundedSemaphore raises ValueError when it is at its value."""
        _sync_puts()
        conn, held = self._handle.conn(), self._held()
        if held:
            # False if the permit was lost with its connection: the broker
            # gave it back then, as far as the value.
            conn.sem_release(self._name, self._value, held.pop())
        else:
            conn.sem_release(self._name, self._value, None, self._bounded)

    def get_value(self) -> int:
        """The permits free now."""
        return self._handle.conn().sem_value(self._name, self._value)

    @property
    def tokens(self) -> list[int]:
        """The fencing tokens of the permits this handle holds, oldest
        first: pass one to the resource the semaphore guards."""
        return list(self._held())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        try:
            value = str(self.get_value())
        except Exception:
            value = "unknown"
        return f"<{type(self).__name__}(name={self._name!r}, value={value})>"


class BoundedSemaphore(Semaphore):
    """multiprocessing.BoundedSemaphore across processes and machines: a
    Semaphore whose release() raises ValueError rather than exceed the
    value it was made with."""

    _bounded = True

    def __repr__(self) -> str:
        return super().__repr__()[:-2] + f", maxvalue={self._value})>"


def _rebuild_semaphore(cls, value, name, url):
    return cls(value, name=name, url=url)


class Event:
    """multiprocessing.Event across processes and machines: set(),
    clear(), is_set(), wait(timeout). A set wakes every waiter, and a
    waiter woken by it returns True even if the event is cleared before
    it looks, as Python's does. Events live in the broker's memory: a
    broker restart clears them."""

    def __init__(self, *, name: str | None = None, url: str | None = None) -> None:
        self._name = _name(name) or f"py-event-{uuid.uuid4().hex}"
        self._url = url
        self._handle = _Handle(url)

    def __reduce__(self):
        return (_rebuild_event, (self._name, self._url))

    def is_set(self) -> bool:
        return self._handle.conn().call([b"EVISSET", self._name.encode()]) == 1

    def set(self) -> None:
        _sync_puts()
        self._handle.conn().call([b"EVSET", self._name.encode()])

    def clear(self) -> None:
        self._handle.conn().call([b"EVCLEAR", self._name.encode()])

    def wait(self, timeout: float | None = None) -> bool:
        """True once the event is set (at once if it is), False if
        `timeout` seconds passed first."""
        if timeout is not None and timeout < 0:
            timeout = 0
        return self._handle.conn().wait_call([b"EVWAIT", self._name.encode()], True, timeout) == 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(name={self._name!r})>"


def _rebuild_event(name, url):
    return Event(name=name, url=url)


class Condition:
    """multiprocessing.Condition across processes and machines, over a
    ferry Lock or RLock (an RLock of its own by default): wait(timeout),
    wait_for(predicate, timeout), notify(n), notify_all(), and the lock's
    acquire(), release() and context manager. wait() gives the lock back
    and joins the condition's line in one step at the broker (no notify
    falls between), and takes the lock again before it returns, as
    Python's does; notify(n) wakes the n oldest waiters."""

    def __init__(self, lock: Lock | RLock | None = None, *, name: str | None = None,
                 url: str | None = None) -> None:
        if lock is None:
            lock = RLock(url=url)
        if not isinstance(lock, (Lock, RLock)):
            raise TypeError(f"lock must be a ferry.Lock or ferry.RLock, not {type(lock).__name__}")
        self._lock = lock
        self._name = _name(name) or f"py-cond-{uuid.uuid4().hex}"
        self._url = url
        self._handle = _Handle(url)
        self.acquire = lock.acquire
        self.release = lock.release

    def __reduce__(self):
        return (_rebuild_condition, (self._lock, self._name, self._url))

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def _broker_lock(self) -> Lock:
        return self._lock._lock if isinstance(self._lock, RLock) else self._lock

    def _is_owned(self) -> bool:
        if isinstance(self._lock, RLock):
            return self._lock._owner == (os.getpid(), threading.get_ident())
        return self._lock._token is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Gives the lock back, waits until notified (True) or `timeout`
        seconds passed (False), and takes the lock again."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if timeout is not None and timeout < 0:
            timeout = 0
        lock = self._broker_lock()
        token = lock._token
        assert token is not None
        # What an RLock's holder had counted, restored with the lock.
        saved = (self._lock._owner, self._lock._count) if isinstance(self._lock, RLock) else None
        lock._token = None
        if saved is not None:
            self._lock._owner, self._lock._count = None, 0
        try:
            args = [b"CONDWAIT", self._name.encode(), b"LOCK", lock._name.encode(),
                    b"TOKEN", str(token).encode()]
            return self._handle.conn().wait_call(args, True, timeout) == 1
        finally:
            lock.acquire()
            if saved is not None:
                self._lock._owner, self._lock._count = saved

    def wait_for(self, predicate, timeout: float | None = None):
        """Waits until `predicate()` is true (it is called holding the
        lock), or `timeout` seconds passed; replies its last value."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        n = _count(n, "n")
        if n > 0:
            self._handle.conn().call([b"CONDNOTIFY", self._name.encode(), b"COUNT", str(n).encode()])

    def notify_all(self) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._handle.conn().call([b"CONDNOTIFY", self._name.encode(), b"ALL"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._lock!r}, name={self._name!r})>"


def _rebuild_condition(lock, name, url):
    return Condition(lock, name=name, url=url)


class Barrier:
    """multiprocessing.Barrier across processes and machines: wait(timeout)
    returns the caller's place in the round (0 to parties - 1), and the
    last to arrive runs `action` before any goes through; abort(),
    reset(), parties, n_waiting, broken. A waiter whose timeout passes
    breaks the barrier (threading.BrokenBarrierError for every waiter), as
    Python's does — and so does a waiter whose process dies, which would
    otherwise never arrive. Handles of one name must agree on parties."""

    def __init__(self, parties: int, action=None, timeout: float | None = None, *,
                 name: str | None = None, url: str | None = None) -> None:
        parties = _count(parties, "parties")
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._name = _name(name) or f"py-barrier-{uuid.uuid4().hex}"
        self._url = url
        self._handle = _Handle(url)

    def __reduce__(self):
        return (_rebuild_barrier, (self._parties, self._action, self._timeout, self._name, self._url))

    def _call(self, *args: bytes):
        return self._handle.conn().call([args[0], self._name.encode(), *args[1:]])

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            timeout = self._timeout
        if timeout is not None and timeout < 0:
            timeout = 0
        _sync_puts()
        args = [b"BARWAIT", self._name.encode(), b"PARTIES", str(self._parties).encode()]
        if self._action is not None:
            args.append(b"ACTION")
        # A broken barrier raises threading.BrokenBarrierError.
        place = self._handle.conn().wait_call(args, True, timeout)
        if self._action is not None and place == self._parties - 1:
            try:
                self._action()
            except BaseException:
                self.abort()
                raise
            self._call(b"BARPASS")
        return place

    def reset(self) -> None:
        self._call(b"BARRESET")

    def abort(self) -> None:
        self._call(b"BARABORT", b"PARTIES", str(self._parties).encode())

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return self._call(b"BARINFO")[0]

    @property
    def broken(self) -> bool:
        return self._call(b"BARINFO")[1] == 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(name={self._name!r}, parties={self._parties})>"


def _rebuild_barrier(parties, action, timeout, name, url):
    return Barrier(parties, action, timeout, name=name, url=url)
