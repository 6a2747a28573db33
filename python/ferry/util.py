"""What every handle in a process shares: the broker's URL, the registry
of private queues and write-behind feeders, finalizers that the garbage
collector sets off (run on a thread of their own), and the fork
generation that keeps a child off its parent's connections."""

from __future__ import annotations

import collections
import gc
import multiprocessing.util as _mp_util
import operator
import os
import re
import sys
import threading
import weakref

from ferry import _ferry
from ferry._ferry import Connection

DEFAULT_URL = "ferry://127.0.0.1:7878"

#: The largest count a queue takes (maxsize, prefetch, write_behind): the
#: broker's numbers are 64-bit.
MAX_COUNT = 2**63 - 1

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def _count(value, what: str) -> int:
    """An int argument, as multiprocessing takes one: TypeError naming it
    for a float or a str (never rounded), ValueError past MAX_COUNT."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if n > MAX_COUNT:
        raise ValueError(f"{what} must be at most 2**63 - 1, not {n}")
    return n


def _name(name, what: str = "name") -> str | None:
    """A queue's or lock's name as the broker takes it, or None (private):
    TypeError for a non-str, ValueError naming the rule otherwise."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a valid name: 1 to 200 of A-Z a-z 0-9 _ . : - "
                         "(leave it out, None, for a private one)")
    return name

# Locks a forked child must find free. A fork copies a lock that another
# thread of the parent held as held, by a thread the child does not have:
# the child would wait on it for ever (a Pool worker forked as the
# parent's feeder thread held _private_lock never took a task). The child
# reinitialises them, as the standard library does its own.
_fork_locks: weakref.WeakSet = weakref.WeakSet()


def _fork_safe(lock):
    """`lock` (a Lock, RLock or Condition), found free by forked children."""
    _fork_locks.add(lock)
    return lock


# The private queues this process made, by (url, name): how many live
# handles it has of each. The last one to go drops the queue.
_private: dict = {}
# Guards _private and _feeders. Reentrant so that _finalizer can ask
# whether this thread holds it.
_private_lock = _fork_safe(threading.RLock())
# This process's write-behind feeders, by (url, name).
_feeders: dict = {}

# Whether the garbage collector is collecting (set by its callback).
_collecting = False

def _gc_phase(phase: str, info: dict) -> None:
    global _collecting
    _collecting = phase == "start"


gc.callbacks.append(_gc_phase)


class _Finisher:
    """One thread per process that runs the finalizers the garbage
    collector set off. The collector runs a finalizer inside whatever
    allocation triggered it — also inside one of this package's locked
    sections (a lane's, the registry's), whose lock the finalizer's work
    needs: run there, it would wait for itself forever. Here it waits for
    that section's end instead. Finalizers run at exit, by close() or when
    a handle's last reference goes run in place."""

    def __init__(self) -> None:
        self._cond = _fork_safe(threading.Condition())
        self._work: collections.deque = collections.deque()
        self._busy = 0
        self._pid = 0

    def forget_parents(self) -> None:
        """In a forked child: the parent's finalizers are the parent's."""
        self._work.clear()
        self._busy = 0

    def submit(self, fn, args) -> None:
        with self._cond:
            self._work.append((fn, args))
            if self._pid != os.getpid():
                try:
                    threading.Thread(target=self._run, name="ferry-finisher", daemon=True).start()
                except RuntimeError:  # the interpreter is shutting down: drain() runs it
                    return
                self._pid = os.getpid()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._work:
                    self._cond.wait()
                fn, args = self._work.popleft()
                self._busy += 1
            try:
                fn(*args)
            except Exception as e:  # a finalizer has no caller to raise to
                print(f"ferry: a finalizer failed: {e!r}", file=sys.stderr)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def drain(self) -> None:
        """At exit: waits for what was handed over (or runs it here if this
        process has no finisher thread)."""
        while True:
            with self._cond:
                if self._pid != os.getpid():
                    work, self._work = list(self._work), collections.deque()
                    break
                if not self._work and not self._busy:
                    return
                self._cond.wait(0.1)
        for fn, args in work:
            fn(*args)


_finisher = _Finisher()
# Before the queues' own exit finalizers (10) and private queues' drops (-1).
_mp_util.Finalize(None, _finisher.drain, exitpriority=100)


def _finalizer(fn, *args) -> None:
    """Runs a finalizer's work in place, or on the finisher thread when the
    garbage collector set it off (see _Finisher). At exit it always runs in
    place: the finisher was drained already, and a collection under way in
    another thread (which sets _collecting for every thread) must not send
    this process's last puts to a thread nobody waits for."""
    if (_collecting or _private_lock._is_owned()) and not _mp_util._exiting:
        _finisher.submit(fn, args)
    else:
        fn(*args)


def _sync_puts() -> None:
    """Before a call that reads a queue or that another process may see
    (a task_done, a put that is not written behind, a lock...): this
    process's earlier write-behind puts, to any queue, are in the broker
    first — program order, as one process's calls have it. So a consumer
    that puts a result, then calls task_done(), never lets join() return
    before the result can be got."""
    if not _feeders:
        return
    with _private_lock:
        feeders = [f for group in _feeders.values() for f in group]
    for feeder in feeders:
        if feeder.pid == os.getpid() and feeder.pending():
            feeder.flush()


# Connections belong to one process: after a fork the child must not use
# the parent's sockets, so every handle checks this generation.
_generation = 0


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1
    for lock in list(_fork_locks):
        lock._at_fork_reinit()
    _finisher.forget_parents()


def _after_fork_in_child_all() -> None:
    _ferry.after_fork()
    _after_fork_in_child()


if hasattr(os, "register_at_fork"):
    # The Rust client's process-wide locks are held across the fork by the
    # forking thread (no other thread can hold one as it is copied); the
    # package's own are reinitialised in the child.
    os.register_at_fork(before=_ferry.before_fork, after_in_parent=_ferry.after_fork,
                        after_in_child=_after_fork_in_child_all)


def _url(url: str | None) -> str:
    return url or os.environ.get("FERRY_URL") or DEFAULT_URL


def connect(url: str | None = None) -> Connection:
    """A raw connection to the broker (the default URL if none is given)."""
    return Connection(_url(url))


def _check_timeout(block: bool, timeout: float | None) -> None:
    if block and timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
