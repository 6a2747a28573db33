"""concurrent.futures.ProcessPoolExecutor across processes and machines,
on ferry.Pool (ferry/pool.py): its workers here, and any process that
joins by name (`python -m ferry work NAME`)."""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import os
import threading
import weakref

from ferry.pool import Pool
from ferry.util import _count

__all__ = ["ProcessPoolExecutor"]


def _process_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


def _each_popped(chunks):
    """The chunks' items in order, each popped before it is handed out:
    nothing here keeps a result the caller let go of."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


# This process's executors: a program that ends without shutdown() still
# waits for the tasks it submitted, as with the standard library's.
_live: weakref.WeakSet = weakref.WeakSet()


def _wait_at_exit() -> None:
    for ex in list(_live):
        if ex._pid == os.getpid():
            ex.shutdown(wait=True)


# Where the standard library's executors register theirs: while Python
# waits for its threads, before atexit's functions — multiprocessing's
# among them, which end the workers — and while a thread may still start
# and a process fork (3.12 refuses both inside an atexit function).
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_wait_at_exit)  # type: ignore[attr-defined]
else:
    atexit.register(_wait_at_exit)


class ProcessPoolExecutor(concurrent.futures.Executor):
    """concurrent.futures.ProcessPoolExecutor across processes and
    machines: submit, map (timeout, chunksize), shutdown(wait,
    cancel_futures), and a context manager. A worker killed mid-task has
    its task run again by another (at-least-once), and the future still
    resolves, once. max_workers=0 is allowed: every task runs in workers
    that joined by name elsewhere."""

    def __init__(self, max_workers: int | None = None, mp_context=None, initializer=None, initargs=(), *,
                 max_tasks_per_child: int | None = None, name: str | None = None,
                 url: str | None = None) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        max_workers = _count(max_workers, "max_workers")
        if max_workers < 0:
            raise ValueError("max_workers must be greater than or equal to 0")
        self._pool = Pool(max_workers, initializer, initargs, max_tasks_per_child, mp_context, name=name, url=url)
        self._lock = threading.Lock()
        self._shutdown = False
        # Futures not yet resolved, with their jobs in the pool.
        self._pending: dict = {}
        # The thread that joins the pool after shutdown(wait=False).
        self._joiner: threading.Thread | None = None
        self._join_lock = threading.Lock()
        self._joined = False
        self._pid = os.getpid()
        _live.add(self)

    @property
    def name(self) -> str:
        """The pool's name: `python -m ferry work NAME` joins it."""
        return self._pool.name

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: concurrent.futures.Future = concurrent.futures.Future()

        def settle(ok: bool, value) -> None:
            with self._lock:
                self._pending.pop(future, None)
            # A future cancelled while its task ran is left cancelled.
            if future.set_running_or_notify_cancel():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        result = self._pool.apply_async(fn, args, kwargs, callback=lambda v: settle(True, v),
                                        error_callback=lambda e: settle(False, e))
        with self._lock:
            if not future.done():
                self._pending[future] = result._job
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        it = zip(*iterables)
        chunks = iter(lambda: list(itertools.islice(it, chunksize)), [])
        results = super().map(_process_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return _each_popped(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._pending.items())
        if cancel_futures:
            # Their tasks may still run (a worker may have them); their
            # results are dropped, and nobody waits for them.
            for f, job in pending:
                if f.cancel():
                    self._pool._jobs.pop(job, None)
        self._pool.close()
        if wait and threading.current_thread() is self._pool._handler:
            # A future's callback runs there: the pool's join would wait
            # for that very callback to end.
            raise RuntimeError("cannot shutdown(wait=True) from a future's callback")
        with self._lock:
            joiner = self._joiner
            if joiner is None and not wait:
                joiner = self._joiner = threading.Thread(target=self._join, name="ferry-executor-shutdown",
                                                         daemon=True)
                joiner.start()
        if wait:
            if joiner is not None:
                joiner.join()  # a shutdown(wait=False) before: that join goes on
            self._join()

    def _join(self) -> None:
        # Once, whoever asks first (the caller, the wait=False thread, exit):
        # what it raises reaches a caller that waits.
        with self._join_lock:
            if not self._joined:
                self._pool.join()
                self._joined = True
