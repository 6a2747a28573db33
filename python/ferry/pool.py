"""multiprocessing.Pool across processes and machines.

A pool is a durable task queue, `pool.<name>` (a JoinableQueue: a task
is leased to one worker, and goes to another if that worker dies), and
its workers: the processes `Pool(processes)` starts here, and any process
anywhere that joins by name (`python -m ferry work NAME -j N`). Each
caller has a private result queue; a task carries its name, and the
worker puts the outcome there: (job, index, ok, value). A task may run
twice (its worker killed after it put the result, before task_done): the
caller keeps the first outcome of each (job, index) — at-least-once
execution, exactly-once results.

Functions and arguments travel pickled, as with multiprocessing's spawn
start method: functions by reference (a module-level function every
worker can import).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
import uuid
from typing import Any
from multiprocessing.pool import (  # type: ignore[attr-defined]  # not in typeshed
    ExceptionWithTraceback,
    MaybeEncodingError,
)

from ferry import queues
from ferry.exceptions import Interrupted
from ferry.util import _count, _name, connect

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "work", "tasks_queue"]

# What a task asks the worker to do.
CALL, MAP, STARMAP = 0, 1, 2

_STATES = RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


def tasks_queue(name: str) -> str:
    """The task queue of the pool called `name`."""
    return f"pool.{name}"


# The worker side


def work(name: str, url: str | None = None, initializer=None, initargs=(), maxtasks=None,
         ignore_sigint: bool = False) -> None:
    """Runs tasks of pool `name` until SIGTERM (the task under way is
    finished first), or `maxtasks` tasks. What `python -m ferry work` and
    a Pool's own processes run."""
    if ignore_sigint:
        # Ctrl-C reaches the whole process group: the parent turns it into
        # a SIGTERM, which lets the task under way finish.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    tasks = queues.JoinableQueue(name=tasks_queue(name), url=url, prefetch=0)
    results = connect(url)
    # Result queues made (or found) here: a caller's private one, made
    # again with its expiry if it was dropped, so a late result never
    # leaves a queue behind for good.
    made: set = set()
    state = {"stop": False}
    # The handler raises nowhere (an exception raised wherever a signal
    # lands can leave a lock held or a task_done() unsent): it ends the
    # wait for a task on this thread's connection, and the loop leaves.
    waits_on = tasks._handle.conn()

    def on_term(signum, frame):
        state["stop"] = True
        waits_on.interrupt()

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    done = 0
    try:
        while not state["stop"] and (maxtasks is None or done < maxtasks):
            try:
                task = tasks.get()
            except Interrupted:
                # A SIGTERM that landed as the task arrived: the get kept
                # it for the next one, and it is under way.
                if not tasks._kept():
                    break
                task = tasks.get_nowait()
            reply, job, index, func, args, mode = task
            result = _run(job, index, func, args, mode)
            try:
                payload = pickle.dumps(result)
            except Exception as e:
                payload = pickle.dumps((job, index, False, MaybeEncodingError(e, result[3])))
            if reply not in made:
                if len(made) > 1000:
                    made.clear()
                results.create(reply, 0, "fifo", queues.PRIVATE_EXPIRE_MS)
                made.add(reply)
            results.put(reply, payload)
            tasks.task_done()
            done += 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        tasks.close()


def _run(job, index, func, args, mode) -> tuple:
    try:
        if mode == CALL:
            value = func(*args[0], **args[1])
        elif mode == MAP:
            value = list(map(func, args))
        else:
            value = list(itertools.starmap(func, args))
        return (job, index, True, value)
    except Exception as e:
        return (job, index, False, ExceptionWithTraceback(e, e.__traceback__))


# The caller side


class ApplyResult:
    """What apply_async() returns: multiprocessing.pool.AsyncResult."""

    def __init__(self, pool: Pool, callback, error_callback) -> None:
        self._pool = pool
        self._job = next(pool._job_ids)
        self._event = threading.Event()
        self._callback, self._error_callback = callback, error_callback
        self._success = False
        self._value: Any = None
        pool._jobs[self._job] = self

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None):
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, index: int, ok: bool, value) -> None:
        if self.ready():
            return
        self._success, self._value = ok, value
        self._finish()

    def _finish(self) -> None:
        if self._success and self._callback is not None:
            self._callback(self._value)
        if not self._success and self._error_callback is not None:
            self._error_callback(self._value)
        self._event.set()
        self._pool._jobs.pop(self._job, None)

    __class_getitem__ = classmethod(lambda cls, item: cls)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """What map_async() returns: one result of many chunks, in order."""

    def __init__(self, pool: Pool, chunks: int, callback, error_callback) -> None:
        super().__init__(pool, callback, error_callback)
        self._chunks: dict = {}
        self._left = chunks
        self._error = None
        if chunks == 0:
            self._success, self._value = True, []
            self._finish()

    def _set(self, index: int, ok: bool, value) -> None:
        if index in self._chunks or self.ready():
            return
        if not ok and self._error is None:
            self._error = value
        self._chunks[index] = value if ok else []
        self._left -= 1
        if self._left == 0:
            if self._error is not None:
                self._success, self._value = False, self._error
            else:
                self._success = True
                self._value = [v for i in sorted(self._chunks) for v in self._chunks[i]]
            self._finish()


class IMapIterator:
    """What imap() returns: results in order, as they come."""

    def __init__(self, pool: Pool, ordered: bool = True) -> None:
        self._pool = pool
        self._job = next(pool._job_ids)
        self._cond = threading.Condition()
        self._ordered = ordered
        self._items: dict = {}  # index -> (ok, values)
        self._ready: collections.deque = collections.deque()
        self._next = 0  # the next chunk index to hand out (ordered)
        self._length: int | None = None  # chunks, once all are submitted
        self._seen = 0
        self._indices: set = set()
        pool._jobs[self._job] = self

    def __iter__(self):
        return self

    def _set(self, index: int, ok: bool, value) -> None:
        with self._cond:
            if index in self._indices:
                return
            self._indices.add(index)
            self._seen += 1
            if self._ordered:
                self._items[index] = (ok, value)
                while self._next in self._items:
                    self._ready.append(self._items.pop(self._next))
                    self._next += 1
            else:
                self._ready.append((ok, value))
            self._cond.notify_all()
            if self._length is not None and self._seen == self._length:
                self._pool._jobs.pop(self._job, None)

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()
            if self._seen == length:
                self._pool._jobs.pop(self._job, None)

    def next(self, timeout: float | None = None):
        with self._cond:
            while True:
                while self._ready:
                    ok, value = self._ready[0]
                    if not ok:
                        self._ready.popleft()
                        raise value
                    if not value:
                        self._ready.popleft()
                        continue
                    item = value.pop(0)
                    return item
                if self._length is not None and self._seen >= self._length and not self._ready:
                    raise StopIteration
                if not self._cond.wait(timeout):
                    raise multiprocessing.TimeoutError

    __next__ = next


class Pool:
    """multiprocessing.Pool across processes and machines: apply,
    apply_async, map, map_async, imap, imap_unordered, starmap,
    starmap_async, close, terminate, join, and a context manager. It
    starts `processes` workers here (os.cpu_count() by default; 0 is
    allowed: everything runs elsewhere); any process on any machine joins
    with `python -m ferry work NAME`. A worker killed mid-task has its task
    run again by another, and the caller still gets its one result."""

    def __init__(self, processes: int | None = None, initializer=None, initargs=(),
                 maxtasksperchild: int | None = None, context=None, *,
                 name: str | None = None, url: str | None = None) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        processes = _count(processes, "processes")
        if processes < 0:
            raise ValueError("Number of processes must be at least 0")
        if maxtasksperchild is not None:
            maxtasksperchild = _count(maxtasksperchild, "maxtasksperchild")
            if maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._name = _name(name) or f"py-pool-{uuid.uuid4().hex}"
        self._private = name is None
        self._url = url
        self._ctx = context or multiprocessing.get_context()
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._tasks = queues.JoinableQueue(name=tasks_queue(self._name), url=url)
        self._results = queues.Queue(url=url)
        self._jobs: dict = {}
        self._job_ids = itertools.count()
        self._state = RUN
        self._workers: list = []
        self._workers_lock = threading.Lock()
        for _ in range(processes):
            self._start_worker()
        self._handler = threading.Thread(target=self._handle_results, name="ferry-pool-results", daemon=True)
        self._handler.start()
        self._keeper = threading.Thread(target=self._keep_workers, name="ferry-pool-workers", daemon=True)
        self._keeper_stop = threading.Event()
        self._keeper.start()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self._name!r} state={self._state} "
                f"pool_size={self._processes}>")

    @property
    def name(self) -> str:
        """The pool's name: `python -m ferry work NAME` joins it."""
        return self._name

    # Workers here

    def _start_worker(self) -> None:
        p = self._ctx.Process(target=work, name="ferry-pool-worker",
                              args=(self._name, self._url, self._initializer, self._initargs, self._maxtasks))
        p.daemon = True
        p.start()
        with self._workers_lock:
            self._workers.append(p)

    def _keep_workers(self) -> None:
        """Replaces the workers that exited (maxtasksperchild, a crash)
        until the pool is terminated, or joined and its tasks are done."""
        while not self._keeper_stop.wait(0.05):
            self._repopulate_pool()

    def _repopulate_pool(self) -> None:
        with self._workers_lock:
            gone = [p for p in self._workers if p.exitcode is not None]
            self._workers = [p for p in self._workers if p.exitcode is None]
        for p in gone:
            p.join()
            if self._state != TERMINATE and not self._keeper_stop.is_set():
                self._start_worker()

    @property
    def _pool(self) -> list:
        """The worker processes here (multiprocessing.Pool's name)."""
        with self._workers_lock:
            return list(self._workers)

    # Results

    def _handle_results(self) -> None:
        while True:
            outcome = self._results.get()
            if outcome is None:
                return
            job, index, ok, value = outcome
            # A task that ran twice: its first outcome counts (each result
            # object ignores an index it has; a finished job is gone).
            target = self._jobs.get(job)
            if target is not None:
                try:
                    target._set(index, ok, value)
                except Exception:
                    traceback.print_exc()  # a callback failed, as multiprocessing's
            # Nothing of a result outlives its job here.
            del outcome, value, target

    # Submitting

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _submit(self, job: int, index: int, func, args, mode: int) -> None:
        self._tasks.put((self._results._name, job, index, func, args, mode))

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None) -> ApplyResult:
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        try:
            self._submit(result._job, 0, func, (tuple(args), dict(kwds)), CALL)
        except BaseException:
            self._jobs.pop(result._job, None)
            raise
        return result

    def _chunksize(self, n: int, chunksize) -> int:
        if chunksize is None:
            chunksize, extra = divmod(n, max(1, self._processes) * 4)
            if extra:
                chunksize += 1
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        return max(1, chunksize)

    def _map_async(self, func, iterable, mode, chunksize, callback, error_callback) -> MapResult:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        items = list(iterable)
        size = self._chunksize(len(items), chunksize)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        result = MapResult(self, len(chunks), callback, error_callback)
        try:
            for index, chunk in enumerate(chunks):
                self._submit(result._job, index, func, chunk, mode)
        except BaseException:
            self._jobs.pop(result._job, None)
            raise
        return result

    def map(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, MAP, chunksize, None, None).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> MapResult:
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, STARMAP, chunksize, None, None).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> MapResult:
        return self._map_async(func, iterable, STARMAP, chunksize, callback, error_callback)

    def _imap(self, func, iterable, chunksize, ordered) -> IMapIterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        result = IMapIterator(self, ordered)

        def submit():
            index = 0
            try:
                it = iter(iterable)
                while True:
                    chunk = list(itertools.islice(it, chunksize))
                    if not chunk:
                        break
                    self._submit(result._job, index, func, chunk, MAP)
                    index += 1
            except Exception as e:
                # The iterable (or a pickle) failed: the caller meets it
                # where the iteration stopped.
                result._set(index, False, e)
                index += 1
            result._set_length(index)

        threading.Thread(target=submit, name="ferry-pool-imap", daemon=True).start()
        return result

    def imap(self, func, iterable, chunksize=1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func, iterable, chunksize=1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, False)

    # Ending

    def close(self) -> None:
        """No more tasks; the workers here end once every task submitted is
        done (join() waits for it)."""
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stops the workers here at once. Tasks they were running go back
        to the pool's queue (another worker runs them); a private pool's
        queue is dropped."""
        self._state = TERMINATE
        self._keeper_stop.set()
        if self._keeper is not threading.current_thread():
            self._keeper.join()
        with self._workers_lock:
            workers = list(self._workers)
        for p in workers:
            if p.exitcode is None:
                p.kill()
        for p in workers:
            p.join()
        self._stop_handler()
        if self._private:
            self._tasks.drop()

    def join(self) -> None:
        """After close() or terminate(): waits until this pool's tasks are
        done and its workers here have ended."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state == CLOSE:
            while self._jobs:
                job = next(iter(list(self._jobs.values())), None)
                if isinstance(job, ApplyResult):
                    job.wait(0.1)
                elif job is not None:
                    with job._cond:
                        job._cond.wait(0.1)
            self._keeper_stop.set()
            self._keeper.join()
            with self._workers_lock:
                workers = list(self._workers)
            for p in workers:
                if p.exitcode is None:
                    p.terminate()  # SIGTERM: a worker between tasks leaves
            for p in workers:
                p.join()
            self._stop_handler()
            if self._private:
                self._tasks.drop()
        else:
            self._keeper.join()

    def _stop_handler(self) -> None:
        if self._handler.is_alive():
            self._results.put(None)
            self._handler.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()
