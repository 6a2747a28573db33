"""queue.Queue and multiprocessing's queues across processes and
machines: Queue, JoinableQueue, LifoQueue, PriorityQueue, SimpleQueue."""

from __future__ import annotations

import collections
import multiprocessing.util as _mp_util
import os
import pickle
import queue as _stdlib_queue
import threading
import time
import uuid
import warnings

from ferry import util
from ferry._ferry import Connection
from ferry.exceptions import FerryError, LeaseLost, LeaseLostWarning, NotLeased
from ferry.feeder import AUTO_WRITE_BEHIND, AUTO_WRITE_BEHIND_ITEM, _Feeder
from ferry.lanes import AUTO_PREFETCH, FAST_GET, _Handle, _Lane, _may_wait, _reaper, _send_dones, _settle, _take_dones
from ferry.ordering import order_key_and_type
from ferry.util import _check_timeout, _count, _feeders, _finalizer, _name, _private, _private_lock, _sync_puts

Empty = _stdlib_queue.Empty
Full = _stdlib_queue.Full

#: A private (unnamed) queue is dropped when its program is done with it —
#: its last handle in the process that made it is collected, or that
#: process exits. Should the program die without that (kill -9), the
#: broker drops it once nobody has used it for this long (ms).
PRIVATE_EXPIRE_MS = 60 * 60 * 1000


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


class Queue:
    """queue.Queue across processes: put/get/task_done/join with the
    stdlib's signatures. Gets TAKE (nothing is ever delivered twice).

    Queue(maxsize=0, *, name=None, url=None, serializer="pickle",
    prefetch=None, write_behind=None). Without a name the queue gets a
    private unique one, which travels with it when it is pickled (e.g. to
    a multiprocessing.Process). With a name and no maxsize, the handle
    attaches to the queue as it is (its maxsize is the queue's); a maxsize
    given that differs from an existing queue's is a ValueError naming
    both. maxsize <= 0 is unbounded, as in the stdlib.

    Round trips are what a network queue pays per item, so by default
    (prefetch and write_behind left None) a handle saves them where
    multiprocessing's own semantics allow (docs/from-multiprocessing.md):

    - write-behind puts: a put() to an unbounded queue hands the item to a
      feeder thread and returns, as multiprocessing.Queue's put does; the
      feeder sends what gathers in one write, each put with a DEDUP key
      (sent again safely after a broker restart). An error is raised by
      the next call. This process's own get(), qsize(), join() ... wait for
      its earlier puts first; another process may see an item a moment
      after put() returned (multiprocessing's caveat too). A put to a
      bounded queue, or of an item over AUTO_WRITE_BEHIND_ITEM bytes, goes
      straight to the broker. At exit the buffer is sent unless
      cancel_join_thread() was called; a process killed (kill -9) loses
      what it buffered, as multiprocessing's does.
    - adaptive prefetch, a JoinableQueue's gets only (leased: a consumer
      that dies holding them has them redelivered): a thread that comes
      back for items quickly gets them a window at a time, the window
      doubling up to AUTO_PREFETCH; one that is slow gets one per get. A
      thread that stops getting gives back what it fetched ahead within
      IDLE_GIVE_BACK. Its task_done()s travel together while it still
      holds items fetched ahead, else at once: join() waits for no more
      than that.

    prefetch=n and write_behind=n fix these instead (0 turns them off:
    every call is one round trip, and a returned put() is in the broker):

    - prefetch=n: a get() that finds nothing fetched fetches up to n items
      in one round trip and serves the next gets from them. For a
      JoinableQueue they are leased; close() gives back the ones not yet
      handed out. For a Queue or SimpleQueue they are taken: close() puts
      them back (at the tail), and a process killed holding them loses
      them, as a multiprocessing.Queue loses what is in its pipe.
      LifoQueue and PriorityQueue cannot prefetch (it would break their
      order).
    - write_behind=n: puts are written behind whatever the maxsize, up to
      n items waiting in this process. And task_done() is sent with this
      thread's next get(), or by join(), flush() or close(). join() and
      shutdown() send everything first.
    """

    _kind = "fifo"
    _take = True

    def __init__(self, maxsize: int | None = None, *, name: str | None = None, url: str | None = None,
                 serializer: str = "pickle", prefetch: int | None = None, write_behind: int | None = None) -> None:
        if serializer not in _SERIALIZERS:
            raise ValueError(f"serializer must be one of {sorted(_SERIALIZERS)}")
        name = _name(name)
        if maxsize is not None:
            maxsize = _count(maxsize, "maxsize")
        prefetch = None if prefetch is None else _count(prefetch, "prefetch")
        write_behind = None if write_behind is None else _count(write_behind, "write_behind")
        if (prefetch or 0) < 0 or (write_behind or 0) < 0:
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
        self._maxsize = maxsize
        # close() was called: no more puts or gets from this handle.
        self._closed = False
        self._url = url
        self._serializer = serializer
        self._dumps, self._loads = _SERIALIZERS[serializer]
        self._handle = _Handle(url, self._name, self._take)
        # Items handed out and not finished: (thread ident, lane, id).
        self._held: collections.deque = collections.deque()
        self._held_lock = util._fork_safe(threading.Lock())
        self._prefetch_option, self._write_behind_option = prefetch, write_behind
        self._auto_prefetch = prefetch is None and self._kind == "fifo" and not self._take
        # A PriorityQueue refuses an item of another shape at put(), as the
        # stdlib would fail to compare it: not on a later call.
        self._auto_write_behind = write_behind is None and self._kind != "priority"
        # Shut down by this handle: its puts are refused at once, as the
        # stdlib's are (another process's shutdown is seen a call later).
        self._shut = False
        self._prefetch = int(prefetch or 0)
        self._write_behind = int(write_behind or 0)
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
        if self._finalizer_generation != util._generation:
            self._finalizer_generation = util._generation
            _mp_util.Finalize(self, _finalizer, args=(_finish, self._name, self._take, self._handle, self._box),
                              exitpriority=10)

    # Pickling: the name and options travel, connections and buffers do not.
    def __reduce__(self):
        # The other side attaches to the queue as it is then (maxsize is
        # assignable: the value known here may be out of date).
        return (_rebuild, (type(self), self._name, None, self._url, self._serializer,
                           self._prefetch_option, self._write_behind_option))

    def _feeder(self) -> _Feeder:
        if self._box[0] is None or self._feeder_generation != util._generation:
            limit = self._write_behind or AUTO_WRITE_BEHIND
            chunk = min(limit, self._maxsize) if self._maxsize > 0 else limit
            self._box[0] = _Feeder(self._handle._url, self._name, self._kind, limit, max(chunk, 1))
            self._feeder_generation = util._generation
            with _private_lock:
                _feeders.setdefault((self._handle._url, self._name), []).append(self._box[0])
            self._arm_finalizer()
        return self._box[0]

    def _sync(self) -> None:
        _sync_puts()

    def flush(self) -> None:
        """Sends every write-behind put and pending task_done() now."""
        self._sync()
        for lane in self._handle.lanes():
            _send_dones(lane, self._name, _may_wait(lane))

    def _settle_all(self) -> None:
        """Before a call that waits on the queue's state (join, shutdown):
        everything buffered is sent, and items fetched ahead go back."""
        self.flush()
        for lane in self._handle.lanes():
            _settle(lane, self._name, self._take, _may_wait(lane))

    @property
    def name(self) -> str:
        return self._name

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        value = _count(value, "maxsize")
        self._sync()
        self._handle.conn().set_maxsize(self._name, max(value, 0))
        self._maxsize = value

    @property
    def is_shutdown(self) -> bool:
        self._sync()
        return dict(self._handle.conn().info(self._name)).get("shutdown", 0) == 1

    def _key(self, item) -> tuple:
        """The item's order key and key type (a PriorityQueue's), or
        (None, None)."""
        return (None, None)

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return f"<ferry.{type(self).__name__} name={self._name!r}{closed}>"

    def _check_closed(self) -> None:
        # As multiprocessing.Queue's put() and get() after close().
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, item, block: bool = True, timeout: float | None = None, *, using=None) -> None:
        """queue.Queue.put. On a postgres:// queue, `using=` a DB-API
        connection (psycopg 3 or psycopg2) puts the item inside that
        connection's open transaction: consumers see it if and when the
        transaction commits; a rollback (or a crash before the commit)
        leaves nothing. Such a put never waits: a full queue raises
        queue.Full at once (a bounded queue's put lock would be held
        while it waited)."""
        if using is not None:
            self._put_using(using, [item])
            return
        self._check_closed()
        _check_timeout(block, timeout)
        key = self._key(item)
        payload = self._dumps(item)
        if self._write_behind or (
            self._auto_write_behind and self._maxsize == 0 and not self._shut and len(payload) <= AUTO_WRITE_BEHIND_ITEM
        ):
            # Refused here, as a plain put would be: the feeder could only
            # report it on a later call.
            lane = self._handle.lane()
            if lane.max_payload == -1:
                lane.max_payload = lane.conn.max_payload()
            if lane.max_payload is not None and len(payload) > lane.max_payload:
                raise ValueError(f"a payload of {len(payload)} bytes is over the broker's limit of {lane.max_payload} bytes (--max-payload)")
            self._feeder().put(payload, key)
            return
        self._sync()  # after the puts written behind before it
        self._handle.conn().put(self._name, payload, bool(block), timeout, *key)

    def _put_using(self, conn, items: list) -> None:
        """The put of `items` through the caller's DB-API connection, in
        its transaction: the same SQL function a ferry client calls
        (ferry.put), so the queue's order, bound and wake-ups hold."""
        self._check_closed()
        if not self._handle._url.startswith(("postgres://", "postgresql://")):
            raise ValueError("put(..., using=) needs a queue on a postgres:// URL")
        # One put of every payload (priority queues: one per item, each
        # with its own order key).
        if self._kind == "priority":
            batches = [(*(k or b"" for k in self._key(item)), [self._dumps(item)]) for item in items]
        else:
            batches = [(b"", b"", [self._dumps(item) for item in items])]
        cur = conn.cursor()
        try:
            for key, keytype, payloads in batches:
                cur.execute(
                    "SELECT count(*) FROM ferry.put(%s, %s::bytea[], %s::bytea, 0, %s::bytea, NULL, 0)",
                    (self._name, payloads, key, keytype),
                )
                row = cur.fetchone()
                if row is None or row[0] == 0:
                    raise _stdlib_queue.Full
        finally:
            cur.close()

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None):
        self._check_closed()
        _check_timeout(block, timeout)
        block = bool(block)  # as the stdlib: any truth value
        _sync_puts()
        lane = self._handle.lane()
        if lane.fetched or self._prefetch or self._auto_prefetch:
            return self._get_prefetched(lane, block, timeout)
        conn = lane.conn
        dones = _take_dones(lane)
        # Ctrl-C may land in the call or as it returns: until the item is
        # recorded and unpickled, an interrupt keeps it for the next get.
        try:
            if dones:
                # This thread's pending task_done()s ride on the get, in one write.
                ((msg_id, payload),) = conn.get_many(self._name, 1, timeout if block else 0.0, self._take, dones)
            else:
                msg_id, payload = conn.get(self._name, block, timeout, self._take)
            with self._held_lock:
                self._held.append((threading.get_ident(), lane, msg_id))
            item = self._loads(payload)
        except BaseException as e:
            self._keep_interrupted(lane, e)
            raise
        return item

    def _kept(self) -> bool:
        """Whether an interrupted get kept an item for this thread's next
        get (no prefetch: nothing else is held here)."""
        return bool(self._handle.lane().fetched)

    def _keep_interrupted(self, lane: _Lane, e: BaseException) -> None:
        """A get interrupted (Ctrl-C) just as the broker delivered — in the
        call, or as it returned — keeps what it got for the next get;
        close() and exit give it back."""
        items = getattr(e, "ferry_items", None) or lane.conn.take_pending()
        if not items:
            return
        ids = {msg_id for msg_id, _ in items}
        with self._held_lock:
            # Recorded as handed out just before the interrupt: it was not.
            kept = [h for h in self._held if not (h[1] is lane and h[2] in ids)]
            if len(kept) != len(self._held):
                self._held = collections.deque(kept)
        with lane.lock:
            already = {f[0] for f in lane.fetched}
            lane.fetched.extend((msg_id, p, self._stored_key(p)) for msg_id, p in items if msg_id not in already)
        self._arm_finalizer()

    def _stored_key(self, payload: bytes) -> tuple:
        """The order key (and type) a payload was put with, to put it back."""
        return (None, None)

    def _get_prefetched(self, lane: _Lane, block: bool, timeout: float | None):
        auto = self._auto_prefetch
        if auto:
            # How long the caller worked since its last get returned: a
            # quick one gets a growing window, a slow one an item at a time.
            fast = time.monotonic() - lane.last <= FAST_GET
            if not fast:
                lane.window = 1
        while True:
            with lane.lock:
                if lane.fetched:
                    msg_id, payload, _ = lane.fetched.popleft()
                    break
            if auto:
                n = lane.window = min(lane.window * 2, AUTO_PREFETCH) if fast else 1
            else:
                n = self._prefetch or 1
            self._arm_finalizer()
            try:
                got = lane.conn.get_many(self._name, n, timeout if block else 0.0, self._take, _take_dones(lane))
                with lane.lock:
                    lane.fetched.extend((msg_id, p, (None, None)) for msg_id, p in got)
                    lane.last = time.monotonic()  # not idle: the reaper waits
                lane.conn.take_pending()  # now in lane.fetched
            except BaseException as e:
                self._keep_interrupted(lane, e)
                raise
            if auto and len(got) > 1:
                _reaper().watch(lane, self._name)
        with self._held_lock:
            self._held.append((threading.get_ident(), lane, msg_id))
        if auto:
            lane.last = time.monotonic()
        return self._loads(payload)

    def get_nowait(self):
        return self.get(block=False)

    def task_done(self) -> None:
        """Finishes the oldest item the calling thread got, else the oldest
        this handle got; ValueError when it holds none. (Python counts
        task_done calls instead: a network queue cannot finish an item
        nobody took.)"""
        _sync_puts()
        me = threading.get_ident()
        with self._held_lock:
            pick = next((h for h in self._held if h[0] == me), None)
            if pick is None and self._held:
                pick = self._held[0]
            if pick is None:
                raise ValueError("task_done() called too many times")
            self._held.remove(pick)
        _, lane, msg_id = pick
        if self._write_behind or (self._auto_prefetch and lane.fetched):
            # Sent with the lane's next get; or, by default, as soon as it
            # holds nothing fetched ahead (by the task_done() that finds
            # it so, or with the reaper's give-back).
            with lane.lock:
                lane.dones.append(msg_id)
                hold = len(lane.dones) < self._write_behind if self._write_behind else bool(lane.fetched)
            if hold:
                self._arm_finalizer()
            else:
                _send_dones(lane, self._name, True)
            return
        dones = _take_dones(lane)
        try:
            if dones:
                if lane.conn.done_many(self._name, dones + [msg_id]) <= len(dones):
                    raise LeaseLost("the items' leases were lost: they are delivered again")
            else:
                lane.conn.done(self._name, msg_id)
        except NotLeased:
            # It held the item, so this is no extra call: the lease ended
            # first (it ran out, or the holder was taken for dead in a
            # failover) and the item is delivered again, or was finished
            # by whoever got it. The caller's mistake it is not: a warning.
            warnings.warn("task_done() of an item whose lease had ended: it is delivered again "
                          "(or was finished by another consumer)", LeaseLostWarning, stacklevel=2)
        except LeaseLost as e:
            # The connection that got it was lost (a broker restart): the
            # item is delivered again and finished by whoever gets it, so
            # join() stays exact. Not the caller's error: a warning.
            warnings.warn(str(e), LeaseLostWarning, stacklevel=2)

    def task_done_many(self, n: int) -> None:
        """task_done() n times in one round trip: finishes the n oldest
        items the calling thread got (then the oldest this handle got).
        ValueError, finishing nothing, when it holds fewer than n. With
        write_behind=n they are sent with this thread's next get."""
        if n <= 0:
            return
        _sync_puts()
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
        by_lane: dict = {}
        for _, lane, msg_id in mine:
            by_lane.setdefault(id(lane), (lane, []))[1].append(msg_id)
        if self._write_behind:
            self._arm_finalizer()
            for lane, ids in by_lane.values():
                with lane.lock:
                    lane.dones.extend(ids)
            return
        finished = sum(lane.conn.done_many(self._name, _take_dones(lane) + ids) for lane, ids in by_lane.values())
        if finished < n:
            # Held, so not too many calls: leases that ended first.
            warnings.warn(f"task_done_many(): {n - finished} of the items' leases had ended: they are "
                          "delivered again (or were finished by another consumer)", LeaseLostWarning, stacklevel=2)

    def join(self) -> None:
        self._settle_all()
        self._handle.conn().join(self._name)

    def qsize(self) -> int:
        """Ready items, including those this handle fetched ahead."""
        self._sync()
        return self._handle.conn().qsize(self._name) + sum(len(lane.fetched) for lane in self._handle.lanes())

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        self._sync()
        return self._handle.conn().full(self._name)

    def shutdown(self, immediate: bool = False) -> None:
        self._settle_all()
        self._handle.conn().shutdown(self._name, immediate)
        self._shut = True

    # Beyond the stdlib: managing the queue in the broker.
    def drop(self) -> None:
        """Removes the queue and everything in it from the broker (waiting
        callers get ShutDown). Naming it again later starts afresh."""
        self._sync()
        self._handle.conn().call([b"QDROP", self._name.encode()])

    def purge(self) -> int:
        """Drops the ready and delayed items (each counted as done);
        replies how many."""
        self._sync()
        return self._handle.conn().call([b"QPURGE", self._name.encode()])

    def reopen(self) -> None:
        """Undoes shutdown(): puts are accepted again. (A shut-down queue
        stays shut down for every later program until reopened.)"""
        self._sync()
        self._handle.conn().call([b"QREOPEN", self._name.encode()])
        self._shut = False

    # multiprocessing.Queue's close / join_thread / cancel_join_thread:
    # about the write-behind buffer and items fetched ahead, as there.
    def close(self) -> None:
        """No more puts from this handle; sends pending task_done()s and
        gives back items fetched ahead and not handed out."""
        self._closed = True
        if self._box[0] is not None:
            self._box[0].close()
        _finish(self._name, self._take, self._handle, [None])

    def join_thread(self) -> None:
        """After close(): waits until the write-behind puts are sent."""
        if self._box[0] is not None:
            self._box[0].flush()

    def cancel_join_thread(self) -> None:
        """Does not wait at exit for write-behind puts to be sent (they may
        be lost)."""
        if self._box[0] is not None:
            self._box[0].wait_at_exit = False

    def put_many(self, items, *, using=None) -> None:
        """Puts all the items in one call, all or nothing, waiting for room
        for all of them. (Priority queues put them one by one, each with its
        own order key.) `using=`: inside a DB-API connection's transaction,
        as put()'s."""
        self._check_closed()
        items = list(items)
        if not items:
            return
        if using is not None:
            self._put_using(using, items)
            return
        self._sync()
        if self._kind == "priority":
            for item in items:
                self._handle.conn().put(self._name, self._dumps(item), True, None, *self._key(item))
            return
        self._handle.conn().put_many(self._name, [self._dumps(i) for i in items])

    def get_many(self, n: int, timeout: float | None = None) -> list:
        """Gets up to n items in one call, waiting at most `timeout` (None:
        forever) for the first; each needs its own task_done()."""
        self._check_closed()
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        self._sync()
        me = threading.get_ident()
        lane = self._handle.lane()
        served = None
        with lane.lock:
            if lane.fetched:
                served = [lane.fetched.popleft() for _ in range(min(n, len(lane.fetched)))]
                lane.last = time.monotonic()
        if served is not None:
            with self._held_lock:
                self._held.extend((me, lane, msg_id) for msg_id, _, _ in served)
            return [self._loads(p) for _, p, _ in served]
        try:
            got = lane.conn.get_many(self._name, n, timeout, self._take, _take_dones(lane))
            with self._held_lock:
                self._held.extend((me, lane, msg_id) for msg_id, _ in got)
            items = [self._loads(p) for _, p in got]
        except BaseException as e:
            self._keep_interrupted(lane, e)
            raise
        return items


def _finish(name, take, handle, box) -> None:
    """Sends a queue handle's pending work, at close(), when the handle is
    collected, or at exit: write-behind puts (unless cancelled), pending
    task_done()s, and items fetched ahead not handed out — leased ones
    given back (nack), taken ones put back."""
    feeder = box[0]
    if feeder is not None:
        if feeder.pid != os.getpid():
            return  # inherited by a forked child: the parent sends it
        feeder.finish()
    try:
        for lane in handle.lanes():
            _settle(lane, name, take, _may_wait(lane))
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
        counted = made_here or key in _private
        if counted:
            _private[key] = 1 if made_here else _private[key] + 1
    if counted:
        _mp_util.Finalize(owner, _finalizer, args=(_release_private, os.getpid(), key), exitpriority=-1)


def _release_private(pid: int, key) -> None:
    """A handle of a private queue went: drops the queue with the last."""
    if pid != os.getpid():
        return  # a forked child's inherited handle: the maker decides
    with _private_lock:
        _private[key] -= 1
        last = _private[key] == 0
        if last:
            del _private[key]
    if not last:
        return
    url, name = key
    try:
        Connection(url).call([b"QDROP", name.encode()])
    except Exception:
        pass  # the broker is gone: its idle expiry drops the queue


def _rebuild(cls, name, maxsize, url, serializer, prefetch=None, write_behind=None):
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


class SimpleQueue(Queue):
    """queue.SimpleQueue: unbounded."""

    def __init__(self, *, name: str | None = None, url: str | None = None, serializer: str = "pickle") -> None:
        super().__init__(None, name=name, url=url, serializer=serializer)

    def __reduce__(self):
        return (_rebuild_simple, (self._name, self._url, self._serializer))


def _rebuild_simple(name, url, serializer):
    return SimpleQueue(name=name, url=url, serializer=serializer)
