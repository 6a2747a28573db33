"""multiprocessing.Lock across processes and machines."""

from __future__ import annotations

import uuid

from ferry.exceptions import LockLost
from ferry.lanes import _Handle
from ferry.util import _name, _sync_puts


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
