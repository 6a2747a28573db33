"""Write-behind puts: a feeder thread per queue and process, as
multiprocessing.Queue's."""

from __future__ import annotations

import collections
import os
import sys
import threading

from ferry._ferry import Connection
from ferry.exceptions import ShutDown, WriteBehindError
from ferry.util import _feeders, _private_lock

#: What a queue made without write_behind= does (see Queue): puts of up
#: to AUTO_WRITE_BEHIND_ITEM bytes to an unbounded queue wait in the
#: feeder, at most AUTO_WRITE_BEHIND of them and AUTO_WRITE_BEHIND_BYTES
#: in all.
AUTO_WRITE_BEHIND = 1000
AUTO_WRITE_BEHIND_BYTES = 1 << 20
AUTO_WRITE_BEHIND_ITEM = 64 << 10


class _Feeder:
    """Write-behind puts, as multiprocessing.Queue's feeder thread does
    them: put() appends to a bounded buffer and returns; one thread per
    process sends what has gathered in one write (QPUTs with DEDUP keys, so
    that a broker restart sends them again safely) while the caller goes
    on, so batches form by themselves. An error is kept and raised by the
    next put() or flush(). It holds no reference to its queue, so a
    finalizer can flush it when the queue goes away or the process exits."""

    def __init__(self, url: str, name: str, kind: str, limit: int, chunk: int) -> None:
        self._url, self._name, self._kind = url, name, kind
        self._limit, self._chunk = limit, chunk
        self._buf: collections.deque = collections.deque()
        self._bytes = 0  # buffered, at most AUTO_WRITE_BEHIND_BYTES (beyond one item)
        self._cond = threading.Condition()
        self._inflight = 0
        self._error: BaseException | None = None
        self._unsent = 0  # puts of failed batches since the error was last raised
        self._closed = False
        self._thread: threading.Thread | None = None
        self.wait_at_exit = True
        self.pid = os.getpid()

    def put(self, payload: bytes, key: bytes | None) -> None:
        with self._cond:
            self._raise_error()
            if self._closed:
                raise ValueError(f"Queue {self._name} is closed")
            while self._buf and (len(self._buf) >= self._limit or self._bytes + len(payload) > AUTO_WRITE_BEHIND_BYTES):
                self._cond.wait()
                self._raise_error()
            self._buf.append((payload, key))
            self._bytes += len(payload)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"ferry-feeder-{self._name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            unsent, self._unsent = self._unsent, 0
            if isinstance(error, ShutDown):
                # Refused, as a plain put would be: nothing went in.
                error.add_note(f"{unsent} write-behind put(s) to {self._name!r} were refused")
                raise error
            raise WriteBehindError(
                f"{unsent} write-behind put(s) to {self._name!r} were not confirmed "
                f"(they may or may not be in the queue): {error}", unsent) from error

    def _run(self) -> None:
        conn: Connection | None = None
        while True:
            with self._cond:
                while not self._buf:
                    if self._closed:
                        return
                    self._cond.wait()
                batch = [self._buf.popleft() for _ in range(min(len(self._buf), self._chunk))]
                self._bytes -= sum(len(payload) for payload, _ in batch)
                self._inflight = len(batch)
                self._cond.notify_all()
            try:
                if conn is None:
                    conn = Connection(self._url)
                if self._kind == "priority":
                    for payload, key in batch:
                        conn.put(self._name, payload, True, None, *key)
                else:
                    conn.put_behind(self._name, [payload for payload, _ in batch])
            except BaseException as e:  # kept for the producer: this thread has no caller
                with self._cond:
                    # The first error, and every put it and later ones cost.
                    if self._error is None:
                        self._error = e
                    self._unsent += len(batch)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def pending(self) -> bool:
        return bool(self._buf or self._inflight or self._error is not None)

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
        """At exit or when the queue is collected: send what is buffered.
        What cannot be sent is reported on stderr (nothing can raise here),
        as multiprocessing's feeder reports its errors."""
        self.close()
        if self.wait_at_exit:
            try:
                self.flush()
            except BaseException as e:
                print(f"ferry: write-behind puts to {self._name!r} were not sent: {e!r}", file=sys.stderr)
        with _private_lock:
            feeders = _feeders.get((self._url, self._name), [])
            if self in feeders:
                feeders.remove(self)
            if not feeders:
                _feeders.pop((self._url, self._name), None)
