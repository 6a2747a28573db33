"""multiprocessing's Lock, RLock, Semaphore and BoundedSemaphore across
processes and machines."""

from __future__ import annotations

import os
import threading
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
    0, does not hand a consumed signal out again). Handles of one name
    must agree on the value."""

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
        return True

    def release(self) -> None:
        """Gives back a permit this handle holds, or (if it holds none:
        another process's release, a signal) adds one. A
        BoundedSemaphore raises ValueError past its value."""
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
