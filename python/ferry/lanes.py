"""A queue handle's connections: one per thread (a lane), with what it
fetched ahead and its task_done()s not sent yet; the reaper that gives
back what an idle thread fetched ahead; and settling a lane (its dones
sent, its items given back)."""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref

from ferry import util
from ferry._ferry import Connection
from ferry.util import _finalizer, _url

#: What a queue made without prefetch= does (see Queue). Prefetch (a JoinableQueue's): the window doubles, up to AUTO_PREFETCH,
#: while the caller comes back for the next item within FAST_GET seconds,
#: and drops to one item when it does not; items it fetched ahead and did
#: not come back for within IDLE_GIVE_BACK seconds are given back.
AUTO_PREFETCH = 64
FAST_GET = 0.001
IDLE_GIVE_BACK = 0.02


class _Lane:
    """One thread's connection for one queue handle, with what it fetched
    ahead and has not handed out — (id, payload, order key), oldest first
    — and the ids of its task_done()s not sent yet. `lock` guards both
    (the reaper thread gives them back); it is never held across a call
    to the broker by the owning thread."""

    __slots__ = ("conn", "thread", "generation", "lock", "fetched", "dones", "window", "last", "max_payload")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.thread = threading.current_thread()
        self.generation = util._generation
        self.lock = threading.Lock()
        self.fetched: collections.deque = collections.deque()
        self.dones: list = []
        self.window = 1  # the adaptive prefetch's next fetch
        self.last = 0.0  # when the last get returned (time.monotonic)
        self.max_payload = -1  # the broker's limit, once asked (None: none)


class _LaneOwner:
    """Kept in a thread's local storage beside its lane: it goes when the
    thread ends, and its finalizer retires the lane."""

    __slots__ = ("__weakref__",)


class _Handle:
    """A connection per thread (and per process), opened lazily: each a
    lane. The handle knows every lane of this process (to send what they
    hold at close or exit); a lane whose thread ended is retired — its
    task_done()s sent, what it fetched ahead given back — and dropped, so
    that its connection closes and the broker delivers again what the
    thread got and did not finish, as when it was the thread's alone."""

    def __init__(self, url: str | None, name: str = "", take: bool = False) -> None:
        self._url = _url(url)
        self._name, self._take = name, take
        self._local = threading.local()
        self._lanes: list = []
        self._lanes_lock = util._fork_safe(threading.Lock())

    def lane(self) -> _Lane:
        lane = getattr(self._local, "lane", None)
        if lane is None or lane.generation != util._generation:
            lane = _Lane(Connection(self._url))
            owner = _LaneOwner()
            self._local.lane, self._local.owner = lane, owner
            weakref.finalize(owner, _finalizer, _retire, weakref.ref(self), lane)
            with self._lanes_lock:
                # A parent process's lanes are not this process's.
                self._lanes = [other for other in self._lanes if other.generation == util._generation]
                self._lanes.append(lane)
        return lane

    def retire(self, lane: _Lane) -> None:
        if lane.generation == util._generation and self._name:
            try:
                _settle(lane, self._name, self._take)
            except Exception:
                pass  # the broker is gone: what the lane held comes back by itself
        with self._lanes_lock:
            if lane in self._lanes:
                self._lanes.remove(lane)

    def conn(self) -> Connection:
        return self.lane().conn

    def lanes(self) -> list:
        with self._lanes_lock:
            return [lane for lane in self._lanes if lane.generation == util._generation]


class _Reaper:
    """One thread per process that gives back what an auto-prefetching
    handle fetched ahead when its thread stops coming back for it
    (IDLE_GIVE_BACK), with that lane's pending task_done()s — so another
    consumer gets those items and join() does not wait on a consumer that
    went on to other work. It sleeps while no lane holds anything."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict = {}  # lane -> queue name
        self._thread: threading.Thread | None = None

    def watch(self, lane: _Lane, name: str) -> None:
        with self._cond:
            if lane in self._watched:
                return
            self._watched[lane] = name
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ferry-prefetch-reaper", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watched:
                    self._cond.wait()
                self._cond.wait(IDLE_GIVE_BACK / 2)
                watched = list(self._watched.items())
            now = time.monotonic()
            for lane, name in watched:
                if lane.fetched and now - lane.last >= IDLE_GIVE_BACK:
                    try:
                        _settle(lane, name, False, wait=False)
                    except Exception:
                        pass  # the broker is gone: leased items come back by themselves
                if not lane.fetched:  # its dones go with its next task_done() or get
                    with self._cond:
                        self._watched.pop(lane, None)


_reapers: dict = {}


def _may_wait(lane: _Lane) -> bool:
    """Whether a call may wait for a lane's connection: its own thread's,
    or an ended thread's. Another live thread may be in a blocking get on
    it; what that lane holds goes with its own next call instead."""
    return lane.thread is threading.current_thread() or not lane.thread.is_alive()


def _take_dones(lane: _Lane) -> list:
    """Removes and replies a lane's pending task_done() ids, for its next
    call to the broker to carry."""
    if not lane.dones:
        return []
    with lane.lock:
        dones, lane.dones = lane.dones, []
    return dones


def _send_dones(lane: _Lane, name: str, wait: bool) -> None:
    """Sends a lane's pending task_done()s (kept if wait is False and its
    connection is busy)."""
    dones = _take_dones(lane)
    if dones and not lane.conn.settle(name, dones, [], wait):
        with lane.lock:
            lane.dones[:0] = dones


def _retire(handle_ref, lane: _Lane) -> None:
    """A lane's thread ended (its local storage went): see _Handle."""
    handle = handle_ref()
    if handle is not None:
        handle.retire(lane)


def _reaper() -> _Reaper:
    pid = os.getpid()
    reaper = _reapers.get(pid)
    if reaper is None:
        _reapers.clear()  # a forked child starts without its parent's thread
        reaper = _reapers[pid] = _Reaper()
    return reaper


def _settle(lane: _Lane, name: str, take: bool, wait: bool = True) -> bool:
    """Sends a lane's pending task_done()s and gives back what it fetched
    ahead — leased items back to the queue (nack), taken ones put back at
    the tail. With wait False, only if its connection is idle (else False,
    and it keeps them)."""
    with lane.lock:
        if not lane.fetched and not lane.dones:
            return True
        if take:
            dones, left, back = lane.dones, list(lane.fetched), []
        else:
            dones, left, back = lane.dones, [], [msg_id for msg_id, _, _ in lane.fetched]
        if not lane.conn.settle(name, dones, back, wait):
            return False
        lane.dones = []
        lane.fetched.clear()
        lane.window = 1
    for msg_id, payload, key in left:
        lane.conn.put(name, payload, True, None, *key)
        lane.conn.done(name, msg_id)
    return True
