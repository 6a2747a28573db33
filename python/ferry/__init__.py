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
import multiprocessing.util as _mp_util
import os
import pickle
import queue as _stdlib_queue
import threading
import uuid
import warnings

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
    "LeaseLostWarning",
    "NotLeased",
    "Empty",
    "Full",
    "connect",
    "DEFAULT_URL",
]

DEFAULT_URL = "ferry://127.0.0.1:7878"


class LeaseLostWarning(RuntimeWarning):
    """task_done() of an item whose connection was lost (a broker restart):
    the item is delivered again and finished by whoever gets it."""

#: A private (unnamed) queue is dropped when its program is done with it —
#: its last handle in the process that made it is collected, or that
#: process exits. Should the program die without that (kill -9), the
#: broker drops it once nobody has used it for this long (ms).
PRIVATE_EXPIRE_MS = 60 * 60 * 1000

# The private queues this process made, by (url, name): how many live
# handles it has of each. The last one to go drops the queue.
_private: dict = {}
_private_lock = threading.Lock()
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


def _raw_dumps(o) -> bytes:
    # bytes(5) would be five zero bytes, and bytes("x") a TypeError without
    # a word about the serializer: take bytes-like items only.
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o)
    raise TypeError(f"the raw serializer puts bytes-like items, not {type(o).__name__}")


_SERIALIZERS = {
    "pickle": (lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads),
    "raw": (_raw_dumps, lambda b: b),
    "json": (
        lambda o: __import__("json").dumps(o).encode(),
        lambda b: __import__("json").loads(b.decode()),
    ),
}


def _check_timeout(block: bool, timeout: float | None) -> None:
    if block and timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class _Feeder:
    """Write-behind puts, as multiprocessing.Queue's feeder thread does
    them: put() appends to a bounded buffer and returns; one thread per
    process sends what has gathered in one QPUTMANY while the caller goes
    on, so batches form by themselves. An error is kept and raised by the
    next put() or flush(). It holds no reference to its queue, so a
    finalizer can flush it when the queue goes away or the process exits."""

    def __init__(self, url: str, name: str, kind: str, limit: int, chunk: int) -> None:
        self._url, self._name, self._kind = url, name, kind
        self._limit, self._chunk = limit, chunk
        self._buf: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.wait_at_exit = True
        self.pid = os.getpid()

    def put(self, payload: bytes, key: bytes | None) -> None:
        with self._cond:
            self._raise_error()
            if self._closed:
                raise ValueError(f"Queue {self._name} is closed")
            while len(self._buf) >= self._limit:
                self._cond.wait()
                self._raise_error()
            self._buf.append((payload, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"ferry-feeder-{self._name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        conn: Connection | None = None
        while True:
            with self._cond:
                while not self._buf:
                    if self._closed:
                        return
                    self._cond.wait()
                batch = [self._buf.popleft() for _ in range(min(len(self._buf), self._chunk))]
                self._inflight = len(batch)
                self._cond.notify_all()
            try:
                if conn is None:
                    conn = Connection(self._url)
                if self._kind == "priority":
                    for payload, key in batch:
                        conn.put(self._name, payload, True, None, *key)
                else:
                    conn.put_many(self._name, [payload for payload, _ in batch])
            except BaseException as e:  # kept for the producer: this thread has no caller
                with self._cond:
                    self._error = e
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def flush(self) -> None:
        """Waits until every buffered put has reached the broker."""
        with self._cond:
            while self._buf or self._inflight:
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def finish(self) -> None:
        """At exit or when the queue is collected: send what is buffered."""
        self.close()
        if self.wait_at_exit:
            try:
                self.flush()
            except BaseException:
                pass


class Queue:
    """queue.Queue across processes: put/get/task_done/join with the
    stdlib's signatures. Gets TAKE (nothing is ever delivered twice).

    Queue(maxsize=0, *, name=None, url=None, serializer="pickle",
    prefetch=0, write_behind=0). Without a name the queue gets a private
    unique one, which travels with it when it is pickled (e.g. to a
    multiprocessing.Process). With a name and no maxsize, the handle
    attaches to the queue as it is (its maxsize is the queue's); a maxsize
    given that differs from an existing queue's is a ValueError naming
    both. maxsize <= 0 is unbounded, as in the stdlib.

    Two opt-in speed-ups trade a little of the broker's bookkeeping for
    round trips (see docs/from-multiprocessing.md):

    - prefetch=n: a get() that finds nothing fetched fetches up to n items
      in one round trip and serves the next gets from them. For a
      JoinableQueue they are leased, so a process that dies holding them
      has them redelivered; close() gives back the ones not yet handed
      out. For a Queue or SimpleQueue they are taken: close() puts them
      back (at the tail), and a process killed holding them loses them, as
      a multiprocessing.Queue loses what is in its pipe. LifoQueue and
      PriorityQueue cannot prefetch (it would break their order).
    - write_behind=n: put() hands the item to a feeder thread (as
      multiprocessing.Queue does) and returns; up to n items wait in this
      process, beyond maxsize. An error is raised by the next put(). And
      task_done() is sent with this thread's next get(), or by join(),
      flush() or close(). join() and shutdown() send everything first; at
      exit the buffer is sent unless cancel_join_thread() was called.
    """

    _kind = "fifo"
    _take = True

    def __init__(self, maxsize: int | None = None, *, name: str | None = None, url: str | None = None,
                 serializer: str = "pickle", prefetch: int = 0, write_behind: int = 0) -> None:
        if serializer not in _SERIALIZERS:
            raise ValueError(f"serializer must be one of {sorted(_SERIALIZERS)}")
        if prefetch < 0 or write_behind < 0:
            raise ValueError("prefetch and write_behind must be non-negative")
        if prefetch and self._kind != "fifo":
            # Items fetched ahead would be served in the order they had then,
            # not behind a newer or higher-priority item put meanwhile.
            raise ValueError(f"prefetch keeps fifo order only; a {type(self).__name__} cannot prefetch")
        self._name = name or f"py-{uuid.uuid4().hex}"
        # A private queue is made with its maxsize (0 by default); a named
        # one is only compared on the settings given.
        if maxsize is None and name is None:
            maxsize = 0
        self._maxsize = None if maxsize is None else int(maxsize)
        self._url = url
        self._serializer = serializer
        self._dumps, self._loads = _SERIALIZERS[serializer]
        self._handle = _Handle(url)
        self._held: collections.deque = collections.deque()
        self._held_lock = threading.Lock()
        self._prefetch = int(prefetch)
        self._write_behind = int(write_behind)
        # Fetched, not yet handed out: (conn, id, payload, order key) —
        # prefetched, or delivered to a get that was interrupted.
        self._fetched: collections.deque = collections.deque()
        # task_done()s not yet sent, per connection: id(conn) -> (conn, [ids]).
        self._dones: dict = {}
        # This process's feeder, in a box the finalizer shares (it must not
        # hold the queue itself).
        self._box: list = [None]
        self._feeder_generation = -1
        self._finalizer_generation = -1
        self._maxsize = _open_queue(self, self._handle.conn(), self._handle._url, self._name,
                                    self._maxsize, self._kind, private=name is None)

    def _arm_finalizer(self) -> None:
        """Makes sure buffered work is sent when this handle is collected
        or this process exits — registered in each process that buffers,
        as multiprocessing.Queue does (a forked child starts with none)."""
        if self._finalizer_generation != _generation:
            self._finalizer_generation = _generation
            _mp_util.Finalize(self, _finish, args=(self._name, self._take, self._fetched, self._dones,
                                                   self._held_lock, self._box), exitpriority=10)

    # Pickling: the name and options travel, connections and buffers do not.
    def __reduce__(self):
        # The other side attaches to the queue as it is then (maxsize is
        # assignable: the value known here may be out of date).
        return (_rebuild, (type(self), self._name, None, self._url, self._serializer,
                           self._prefetch, self._write_behind))

    def _feeder(self) -> _Feeder:
        if self._box[0] is None or self._feeder_generation != _generation:
            limit = self._write_behind
            chunk = min(limit, self._maxsize) if self._maxsize > 0 else limit
            self._box[0] = _Feeder(self._handle._url, self._name, self._kind, limit, max(chunk, 1))
            self._feeder_generation = _generation
            self._arm_finalizer()
        return self._box[0]

    def flush(self) -> None:
        """Sends every write-behind put and pending task_done() now."""
        if self._write_behind:
            if self._box[0] is not None and self._feeder_generation == _generation:
                self._box[0].flush()
            self._send_dones(None)

    def _take_dones(self, conn) -> list:
        """Removes and replies the pending task_done() ids of one
        connection, for its next get to carry."""
        if not self._dones:
            return []
        with self._held_lock:
            batch = self._dones.pop(id(conn), None)
        return batch[1] if batch else []

    def _send_dones(self, only) -> None:
        """Sends the pending task_done()s of one connection (None: all)."""
        with self._held_lock:
            if only is None:
                batches = list(self._dones.values())
                self._dones.clear()
            else:
                batch = self._dones.pop(id(only), None)
                batches = [batch] if batch else []
        for conn, ids in batches:
            conn.done_many(self._name, ids)

    @property
    def name(self) -> str:
        return self._name

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self._handle.conn().set_maxsize(self._name, max(int(value), 0))
        self._maxsize = int(value)

    @property
    def is_shutdown(self) -> bool:
        return dict(self._handle.conn().info(self._name)).get("shutdown", 0) == 1

    def _key(self, item) -> tuple:
        """The item's order key and key type (a PriorityQueue's), or
        (None, None)."""
        return (None, None)

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        _check_timeout(block, timeout)
        key = self._key(item)
        if self._write_behind:
            payload = self._dumps(item)
            # Refused here, as a plain put would be: the feeder could only
            # report it on a later put.
            limit = self._handle.conn().max_payload()
            if limit is not None and len(payload) > limit:
                raise ValueError(f"a payload of {len(payload)} bytes is over the broker's limit of {limit} bytes (--max-payload)")
            self._feeder().put(payload, key)
            return
        self._handle.conn().put(self._name, self._dumps(item), bool(block), timeout, *key)

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None):
        _check_timeout(block, timeout)
        block = bool(block)  # as the stdlib: any truth value
        if self._prefetch or self._fetched:
            return self._get_prefetched(block, timeout)
        conn = self._handle.conn()
        dones = self._take_dones(conn)
        # Ctrl-C may land in the call or as it returns: until the item is
        # recorded and unpickled, an interrupt keeps it for the next get.
        try:
            if dones:
                # This thread's pending task_done()s ride on the get, in one write.
                ((msg_id, payload),) = conn.get_many(self._name, 1, timeout if block else 0.0, self._take, dones)
            else:
                msg_id, payload = conn.get(self._name, block, timeout, self._take)
            with self._held_lock:
                self._held.append((threading.get_ident(), conn, msg_id))
            item = self._loads(payload)
        except BaseException as e:
            self._keep_interrupted(conn, e)
            raise
        return item

    def _keep_interrupted(self, conn, e: BaseException) -> None:
        """A get interrupted (Ctrl-C) just as the broker delivered — in the
        call, or as it returned — keeps what it got for the next get;
        close() and exit give it back."""
        items = getattr(e, "ferry_items", None) or conn.take_pending()
        if not items:
            return
        ids = {msg_id for msg_id, _ in items}
        with self._held_lock:
            already = {f[1] for f in self._fetched if f[0] is conn}
            items = [(msg_id, p) for msg_id, p in items if msg_id not in already]
            # Recorded as handed out just before the interrupt: it was not.
            kept = [h for h in self._held if not (h[1] is conn and h[2] in ids)]
            if len(kept) != len(self._held):
                self._held = collections.deque(kept)
            self._fetched.extend((conn, msg_id, p, self._stored_key(p)) for msg_id, p in items)
        self._arm_finalizer()

    def _stored_key(self, payload: bytes) -> tuple:
        """The order key (and type) a payload was put with, to put it back."""
        return (None, None)

    def _get_prefetched(self, block: bool, timeout: float | None):
        me = threading.get_ident()
        while True:
            with self._held_lock:
                if self._fetched:
                    conn, msg_id, payload, _ = self._fetched.popleft()
                    self._held.append((me, conn, msg_id))
                    break
            conn = self._handle.conn()
            wait = timeout if block else 0.0
            self._arm_finalizer()
            try:
                got = conn.get_many(self._name, self._prefetch or 1, wait, self._take, self._take_dones(conn))
                with self._held_lock:
                    self._fetched.extend((conn, msg_id, p, (None, None)) for msg_id, p in got)
                conn.take_pending()  # now in _fetched
            except BaseException as e:
                self._keep_interrupted(conn, e)
                raise
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
            if self._write_behind:
                self._arm_finalizer()
                pending = self._dones.setdefault(id(conn), (conn, []))[1]
                pending.append(msg_id)
                if len(pending) < self._write_behind:
                    return
        if self._write_behind:
            self._send_dones(conn)
            return
        try:
            conn.done(self._name, msg_id)
        except NotLeased:
            raise ValueError("task_done() called too many times") from None
        except LeaseLost as e:
            # The connection that got it was lost (a broker restart): the
            # item is delivered again and finished by whoever gets it, so
            # join() stays exact. Not the caller's error: a warning.
            warnings.warn(str(e), LeaseLostWarning, stacklevel=2)

    def task_done_many(self, n: int) -> None:
        """task_done() n times in one round trip: finishes the n oldest
        items the calling thread got (then the oldest this handle got).
        ValueError, finishing nothing, when it holds fewer than n. With
        write_behind they are sent with this thread's next get."""
        if n <= 0:
            return
        me = threading.get_ident()
        held = self._held
        with self._held_lock:
            if len(held) < n:
                raise ValueError("task_done() called too many times")
            mine = [h for h in held if h[0] == me][:n]
            if len(mine) < n:
                mine += [h for h in held if h[0] != me][: n - len(mine)]
            if all(held[i] is h for i, h in enumerate(mine)):
                for _ in mine:  # the usual case: the oldest n, in order
                    held.popleft()
            else:
                for h in mine:
                    held.remove(h)
        by_conn: dict = {}
        for _, conn, msg_id in mine:
            by_conn.setdefault(id(conn), (conn, []))[1].append(msg_id)
        if self._write_behind:
            self._arm_finalizer()
            with self._held_lock:
                for key, (conn, ids) in by_conn.items():
                    self._dones.setdefault(key, (conn, []))[1].extend(ids)
            return
        finished = sum(conn.done_many(self._name, ids) for conn, ids in by_conn.values())
        if finished < n:
            raise ValueError("task_done() called too many times")

    def join(self) -> None:
        self.flush()
        self._handle.conn().join(self._name)

    def qsize(self) -> int:
        """Ready items, including those prefetched by this handle."""
        return self._handle.conn().qsize(self._name) + len(self._fetched)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._handle.conn().full(self._name)

    def shutdown(self, immediate: bool = False) -> None:
        self.flush()
        self._handle.conn().shutdown(self._name, immediate)

    # Beyond the stdlib: managing the queue in the broker.
    def drop(self) -> None:
        """Removes the queue and everything in it from the broker (waiting
        callers get ShutDown). Naming it again later starts afresh."""
        self._handle.conn().call([b"QDROP", self._name.encode()])

    def purge(self) -> int:
        """Drops the ready and delayed items (each counted as done);
        replies how many."""
        return self._handle.conn().call([b"QPURGE", self._name.encode()])

    def reopen(self) -> None:
        """Undoes shutdown(): puts are accepted again. (A shut-down queue
        stays shut down for every later program until reopened.)"""
        self._handle.conn().call([b"QREOPEN", self._name.encode()])

    # multiprocessing.Queue's close / join_thread / cancel_join_thread: with
    # write-behind or prefetch they mean what they mean there; otherwise
    # there is nothing to close and they do nothing.
    def close(self) -> None:
        """No more puts from this handle; sends pending task_done()s and
        gives back prefetched items not handed out."""
        if self._box[0] is not None:
            self._box[0].close()
        _finish(self._name, self._take, self._fetched, self._dones, self._held_lock, [None])

    def join_thread(self) -> None:
        """After close(): waits until the write-behind puts are sent."""
        if self._box[0] is not None:
            self._box[0].flush()

    def cancel_join_thread(self) -> None:
        """Does not wait at exit for write-behind puts to be sent (they may
        be lost)."""
        if self._box[0] is not None:
            self._box[0].wait_at_exit = False

    def put_many(self, items) -> None:
        """Puts all the items in one call, all or nothing, waiting for room
        for all of them. (Priority queues put them one by one, each with its
        own order key.)"""
        items = list(items)
        if not items:
            return
        self.flush()
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
        me = threading.get_ident()
        with self._held_lock:
            if self._fetched:
                served = [self._fetched.popleft() for _ in range(min(n, len(self._fetched)))]
                self._held.extend((me, conn, msg_id) for conn, msg_id, _, _ in served)
                return [self._loads(p) for _, _, p, _ in served]
        conn = self._handle.conn()
        try:
            got = conn.get_many(self._name, n, timeout, self._take, self._take_dones(conn))
            with self._held_lock:
                self._held.extend((me, conn, msg_id) for msg_id, _ in got)
            items = [self._loads(p) for _, p in got]
        except BaseException as e:
            self._keep_interrupted(conn, e)
            raise
        return items


def _finish(name, take, fetched, dones, lock, box) -> None:
    """Sends a queue handle's pending work, at close(), when the handle is
    collected, or at exit: write-behind puts (unless cancelled), pending
    task_done()s, and prefetched items not handed out — leased ones given
    back (nack), taken ones put back."""
    feeder = box[0]
    if feeder is not None:
        if feeder.pid != os.getpid():
            return  # inherited by a forked child: the parent sends it
        feeder.finish()
    with lock:
        batches = list(dones.values())
        dones.clear()
        left = list(fetched)
        fetched.clear()
    try:
        for conn, ids in batches:
            conn.done_many(name, ids)
        for conn, msg_id, payload, key in left:
            if take:
                conn.put(name, payload, True, None, *key)
                conn.done(name, msg_id)
            else:
                conn.nack(name, msg_id)
    except FerryError:
        pass  # the broker is gone; leased items come back by themselves


def _open_queue(owner, conn, url: str, name: str, maxsize: int | None, kind: str, private: bool) -> int:
    """Makes queue `name` (or attaches to it: maxsize None) and replies its
    maxsize. A private queue is made with PRIVATE_EXPIRE_MS, and `owner`
    is counted as a handle of it (see _track_private)."""
    bound = None if maxsize is None else max(maxsize, 0)
    conn.create(name, bound, kind, PRIVATE_EXPIRE_MS if private else None)
    _track_private(owner, url, name, private)
    if maxsize is None:
        maxsize = dict(conn.info(name)).get("maxsize", 0)
    return maxsize


def _track_private(owner, url: str, name: str, made_here: bool) -> None:
    """Counts `owner` if its queue is one this process made without a
    name; the last such handle to go drops the queue. Runs after
    multiprocessing joins this process's children at exit (exitpriority
    -1), so children are done with it by then."""
    key = (url, name)
    with _private_lock:
        if made_here:
            _private[key] = 0
        elif key not in _private:
            return
        _private[key] += 1
    _mp_util.Finalize(owner, _release_private, args=(os.getpid(), key), exitpriority=-1)


def _release_private(pid: int, key) -> None:
    """A handle of a private queue went: drops the queue with the last."""
    if pid != os.getpid():
        return  # a forked child's inherited handle: the maker decides
    with _private_lock:
        _private[key] -= 1
        if _private[key] > 0:
            return
        del _private[key]
    url, name = key
    try:
        Connection(url).call([b"QDROP", name.encode()])
    except Exception:
        pass  # the broker is gone: its idle expiry drops the queue


def _rebuild(cls, name, maxsize, url, serializer, prefetch=0, write_behind=0):
    return cls(maxsize, name=name, url=url, serializer=serializer, prefetch=prefetch, write_behind=write_behind)


class JoinableQueue(Queue):
    """multiprocessing.JoinableQueue across processes and machines. Gets
    are leased: an item whose consumer dies before task_done() is
    delivered again, so join() cannot hang on a dead consumer."""

    _take = False


class LifoQueue(Queue):
    """queue.LifoQueue: the newest item first."""

    _kind = "lifo"


class PriorityQueue(Queue):
    """queue.PriorityQueue: the least item first, as Python compares them.

    Items are ordered by a byte key made from them: numbers of any size
    and kind (int, float, bool: exactly, so time.time_ns() stamps order
    right), str, bytes, None, tuples of them, and @dataclass(order=True)
    objects (by their compared fields, as the stdlib's docs recommend). A
    tuple is ordered by its leading elements that can be, so
    `(priority, anything)` works, and equal keys come out first in, first
    out. Items the stdlib could not compare with those in the queue are
    refused with TypeError, never misordered: an item that cannot be
    ordered at all, and an item of another shape (other types at the same
    places) than the items the queue holds — (1, 'a') then ('x', 'b').
    """

    _kind = "priority"

    def _key(self, item) -> tuple:
        return order_key_and_type(item)

    def _stored_key(self, payload: bytes) -> tuple:
        return self._key(self._loads(payload))


def _escape(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff") + b"\x00"


_INF = float("inf")


def _number(x, out: bytearray) -> bool:
    """Appends a number's key: every int, float and bool in one exact
    order. A finite x ≠ 0 is ±2**e × 1.f: a sign class, then e (8 bytes,
    offset) and the bits of f in 7-bit groups, each shifted left with a
    "more follows" bit — a code no other is a prefix of, so that a
    negative number's key can be the positive one's bytes inverted.
    False for NaN, which has no order."""
    if isinstance(x, float):
        if x != x:
            return False
        if x in (_INF, -_INF):
            out += b"\x14" if x > 0 else b"\x10"
            return True
        p, q = x.as_integer_ratio()  # q is a power of two
        k = q.bit_length() - 1
    else:
        p, k = int(x), 0
    if p == 0:
        out += b"\x12"
        return True
    neg = p < 0
    p = -p if neg else p
    bits = p.bit_length() - 1  # the bits after the leading one
    frac = p - (1 << bits)
    if frac:
        trailing = (frac & -frac).bit_length() - 1
        frac >>= trailing
        bits -= trailing
    else:
        bits = 0
    enc = bytearray((p.bit_length() - 1 - k + (1 << 63)).to_bytes(8, "big"))
    if bits == 0:
        enc.append(0)
    else:
        pad = -bits % 7
        frac <<= pad
        n = (bits + pad) // 7
        for i in range(n):
            group = (frac >> (7 * (n - 1 - i))) & 0x7F
            enc.append(group << 1 | (i < n - 1))
    if neg:
        out += b"\x11" + bytes(255 - b for b in enc)
    else:
        out += b"\x13" + enc
    return True


def _orderable_dataclass(x) -> bool:
    params = getattr(type(x), "__dataclass_params__", None)
    return params is not None and params.order and not isinstance(x, type)


def _encode(x, out: bytearray, shape: list) -> bool:
    """Appends x's order key to out and its type to shape; False (nothing
    appended) if it cannot be ordered. Codes sort None < bytes < str <
    tuple < dataclass < numbers (items of different types are never
    compared: the key type keeps them apart)."""
    if isinstance(x, (bool, int, float)):
        mark = len(out)
        out += b"\x21"
        if not _number(x, out):
            del out[mark:]
            return False
        shape.append("n")
    elif x is None:
        out += b"\x00"
        shape.append("z")
    elif isinstance(x, bytes):
        out += b"\x01" + _escape(x)
        shape.append("b")
    elif isinstance(x, str):
        out += b"\x02" + _escape(x.encode("utf-8"))
        shape.append("s")
    elif isinstance(x, tuple):
        out += b"\x05"
        shape.append("(")
        _encode_fields(x, out, shape)
        out += b"\x00"
        shape.append(")")
    elif _orderable_dataclass(x):
        import dataclasses

        cls = type(x)
        out += b"\x06"
        shape.append(f"{cls.__module__}.{cls.__qualname__}(")
        _encode_fields([getattr(x, f.name) for f in dataclasses.fields(x) if f.compare], out, shape)
        out += b"\x00"
        shape.append(")")
    else:
        return False
    return True


def _encode_fields(fields, out: bytearray, shape: list) -> None:
    """A tuple's elements, up to the first that cannot be ordered (its
    place in the shape is "?": anything may follow)."""
    for e in fields:
        if not _encode(e, out, shape):
            shape.append("?")
            break


def order_key_and_type(item) -> tuple:
    """The byte string whose order is the item's order in a PriorityQueue,
    and the item's key type (its shape: the types at each place)."""
    out, shape = bytearray(), []
    if not _encode(item, out, shape):
        raise TypeError(
            f"cannot order items of type {type(item).__name__} in a ferry.PriorityQueue "
            "(numbers, str, bytes, None, tuples and @dataclass(order=True) can be)"
        )
    return bytes(out), "".join(shape).encode()


def order_key(item) -> bytes:
    """The byte string whose order is the item's order in a PriorityQueue."""
    return order_key_and_type(item)[0]


class SimpleQueue(Queue):
    """queue.SimpleQueue: unbounded."""

    def __init__(self, *, name: str | None = None, url: str | None = None, serializer: str = "pickle") -> None:
        super().__init__(None, name=name, url=url, serializer=serializer)

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
            timeout = 0  # multiprocessing.Lock: a negative timeout tries once
        token = self._handle.conn().lock(self._name, bool(block), timeout)
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
