"""ferry: Python's queue and multiprocessing queues, across processes and machines.

    >>> import ferry
    >>> q = ferry.JoinableQueue(name="jobs", maxsize=5)   # a named, shared queue
    >>> q.put({"photo": 1})                                 # pickled by default
    >>> item = q.get()                                      # leased: redelivered if this process dies
    >>> q.task_done()
    >>> q.join()

The broker is found at FERRY_URL, else ferry://127.0.0.1:7878.
"""

from __future__ import annotations

import collections
import os
import pickle
import queue as _stdlib_queue
import threading
import uuid

from ferry._ferry import Connection, FerryError, LeaseLost, NotLeased, ShutDown

__all__ = [
    "Queue",
    "JoinableQueue",
    "LifoQueue",
    "PriorityQueue",
    "SimpleQueue",
    "Lock",
    "ShutDown",
    "FerryError",
    "LeaseLost",
    "NotLeased",
    "Empty",
    "Full",
    "connect",
    "DEFAULT_URL",
]

DEFAULT_URL = "ferry://127.0.0.1:7878"
Empty = _stdlib_queue.Empty
Full = _stdlib_queue.Full

# Connections belong to one process: after a fork the child must not use
# the parent's sockets, so every handle checks this generation.
_generation = 0


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _url(url: str | None) -> str:
    return url or os.environ.get("FERRY_URL") or DEFAULT_URL


def connect(url: str | None = None) -> Connection:
    """A raw connection to the broker (the default URL if none is given)."""
    return Connection(_url(url))


class _Handle:
    """A connection per thread (and per process), opened lazily."""

    def __init__(self, url: str | None) -> None:
        self._url = _url(url)
        self._local = threading.local()

    def conn(self) -> Connection:
        local = self._local
        if getattr(local, "generation", None) != _generation:
            local.conn = Connection(self._url)
            local.generation = _generation
        return local.conn


_SERIALIZERS = {
    "pickle": (lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads),
    "raw": (lambda o: bytes(o), lambda b: b),
    "json": (
        lambda o: __import__("json").dumps(o).encode(),
        lambda b: __import__("json").loads(b.decode()),
    ),
}


def _check_timeout(block: bool, timeout: float | None) -> None:
    if block and timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """queue.Queue across processes: put/get/task_done/join with the
    stdlib's signatures. Gets TAKE (nothing is ever delivered twice).

    Queue(maxsize=0, *, name=None, url=None, serializer="pickle"). Without
    a name the queue gets a private unique one, which travels with it when
    it is pickled (e.g. to a multiprocessing.Process).
    """

    _kind = "fifo"
    _take = True

    def __init__(self, maxsize: int = 0, *, name: str | None = None, url: str | None = None,
                 serializer: str = "pickle") -> None:
        if serializer not in _SERIALIZERS:
            raise ValueError(f"serializer must be one of {sorted(_SERIALIZERS)}")
        self._name = name or f"py-{uuid.uuid4().hex}"
        self._maxsize = int(maxsize)
        self._url = url
        self._serializer = serializer
        self._dumps, self._loads = _SERIALIZERS[serializer]
        self._handle = _Handle(url)
        self._held: collections.deque = collections.deque()
        self._held_lock = threading.Lock()
        self._handle.conn().create(self._name, self._maxsize, self._kind)

    # Pickling: the name travels, connections do not.
    def __reduce__(self):
        return (_rebuild, (type(self), self._name, self._maxsize, self._url, self._serializer))

    @property
    def name(self) -> str:
        return self._name

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self._handle.conn().set_maxsize(self._name, int(value))
        self._maxsize = int(value)

    @property
    def is_shutdown(self) -> bool:
        return dict(self._handle.conn().info(self._name)).get("shutdown", 0) == 1

    def _key(self, item) -> bytes | None:
        return None

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        _check_timeout(block, timeout)
        key = self._key(item)
        self._handle.conn().put(self._name, self._dumps(item), block, timeout, key)

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None):
        _check_timeout(block, timeout)
        conn = self._handle.conn()
        msg_id, payload = conn.get(self._name, block, timeout, self._take)
        with self._held_lock:
            self._held.append((threading.get_ident(), conn, msg_id))
        return self._loads(payload)

    def get_nowait(self):
        return self.get(block=False)

    def task_done(self) -> None:
        """Finishes the oldest item the calling thread got, else the oldest
        this handle got; ValueError when it holds none. (Python counts
        task_done calls instead: a network queue cannot finish an item
        nobody took.)"""
        me = threading.get_ident()
        with self._held_lock:
            pick = next((h for h in self._held if h[0] == me), None)
            if pick is None and self._held:
                pick = self._held[0]
            if pick is None:
                raise ValueError("task_done() called too many times")
            self._held.remove(pick)
        _, conn, msg_id = pick
        try:
            conn.done(self._name, msg_id)
        except NotLeased:
            raise ValueError("task_done() called too many times") from None

    def join(self) -> None:
        self._handle.conn().join(self._name)

    def qsize(self) -> int:
        return self._handle.conn().qsize(self._name)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._handle.conn().full(self._name)

    def shutdown(self, immediate: bool = False) -> None:
        self._handle.conn().shutdown(self._name, immediate)

    # multiprocessing.Queue compatibility: harmless no-ops.
    def close(self) -> None:
        pass

    def join_thread(self) -> None:
        pass

    def cancel_join_thread(self) -> None:
        pass

    def put_many(self, items) -> None:
        """Puts all the items in one call, all or nothing, waiting for room
        for all of them. (Priority queues put them one by one, each with its
        own order key.)"""
        items = list(items)
        if not items:
            return
        if self._kind == "priority":
            for item in items:
                self.put(item)
            return
        self._handle.conn().put_many(self._name, [self._dumps(i) for i in items])

    def get_many(self, n: int, timeout: float | None = None) -> list:
        """Gets up to n items in one call, waiting at most `timeout` (None:
        forever) for the first; each needs its own task_done()."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        conn = self._handle.conn()
        got = conn.get_many(self._name, n, timeout, self._take)
        me = threading.get_ident()
        with self._held_lock:
            self._held.extend((me, conn, msg_id) for msg_id, _ in got)
        return [self._loads(p) for _, p in got]


def _rebuild(cls, name, maxsize, url, serializer):
    return cls(maxsize, name=name, url=url, serializer=serializer)


class JoinableQueue(Queue):
    """multiprocessing.JoinableQueue across processes and machines. Gets
    are leased: an item whose consumer dies before task_done() is
    delivered again, so join() cannot hang on a dead consumer."""

    _take = False


class LifoQueue(Queue):
    """queue.LifoQueue: the newest item first."""

    _kind = "lifo"


class PriorityQueue(Queue):
    """queue.PriorityQueue: the least item first, as Python compares them,
    for items built from numbers, strings, bytes, None, bools and tuples of
    them (a tuple is ordered by its leading elements that can be encoded,
    so `(priority, anything)` works). Equal keys come out first in, first
    out. An item that cannot be encoded raises TypeError."""

    _kind = "priority"

    def _key(self, item) -> bytes:
        return order_key(item)


def _escape(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff") + b"\x00"


def _encode(x, out: bytearray, top: bool) -> bool:
    """Appends x's order key; False (nothing appended) if it cannot be
    encoded. Codes sort None < bytes < str < tuple < numbers."""
    if x is None:
        out += b"\x00"
    elif isinstance(x, (bool, int, float)):
        f = float(x)
        if f != f:
            return False  # NaN has no order
        if isinstance(x, int) and not isinstance(x, bool) and abs(x) > 2**53:
            return False  # not exactly representable alongside floats
        if f == 0.0:
            f = 0.0  # -0.0 == 0.0
        bits = int.from_bytes(__import__("struct").pack(">d", f), "big")
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        out += b"\x21" + bits.to_bytes(8, "big")
    elif isinstance(x, bytes):
        out += b"\x01" + _escape(x)
    elif isinstance(x, str):
        out += b"\x02" + _escape(x.encode("utf-8"))
    elif isinstance(x, tuple):
        out += b"\x05"
        for e in x:
            if not _encode(e, out, False):
                break
        out += b"\x00"
    else:
        return False
    return True


def order_key(item) -> bytes:
    """The byte string whose order is the item's order in a PriorityQueue."""
    out = bytearray()
    if not _encode(item, out, True):
        raise TypeError(f"cannot order items of type {type(item).__name__} in a ferry.PriorityQueue")
    return bytes(out)


class SimpleQueue(Queue):
    """queue.SimpleQueue: unbounded."""

    def __init__(self, *, name: str | None = None, url: str | None = None, serializer: str = "pickle") -> None:
        super().__init__(0, name=name, url=url, serializer=serializer)

    def __reduce__(self):
        return (_rebuild_simple, (self._name, self._url, self._serializer))


def _rebuild_simple(name, url, serializer):
    return SimpleQueue(name=name, url=url, serializer=serializer)


class Lock:
    """multiprocessing.Lock across processes and machines: acquire(block,
    timeout), release(), and a context manager. Released by the broker if
    the holder's connection dies."""

    def __init__(self, *, name: str | None = None, url: str | None = None) -> None:
        self._name = name or f"py-lock-{uuid.uuid4().hex}"
        self._url = url
        self._handle = _Handle(url)
        self._token: int | None = None

    def __reduce__(self):
        return (_rebuild_lock, (self._name, self._url))

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if timeout is not None and timeout < 0:
            timeout = None  # multiprocessing.Lock treats a negative timeout as none
        token = self._handle.conn().lock(self._name, block, timeout)
        if token is None:
            return False
        self._token = token
        return True

    def release(self) -> None:
        if self._token is None or not self._handle.conn().unlock(self._name, self._token):
            raise ValueError("release() of an unlocked lock")
        self._token = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _rebuild_lock(name, url):
    return Lock(name=name, url=url)
