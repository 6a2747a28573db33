"""ferry's exceptions, all importable from `ferry`:

    FerryError                 an error reply from the broker (its code first)
    ├── ShutDown               the queue was shut down (also queue.ShutDown on 3.13+)
    ├── AuthenticationError    NOAUTH / WRONGPASS: the URL's password
    ├── PermissionDenied       NOPERM: the user has no such right (--acl-file)
    ├── NotLeased              task_done() of an item this handle does not hold
    ├── LeaseLost              the connection that held an item was lost
    ├── WriteBehindError       write-behind puts that could not be confirmed
    └── LockLost               release() of a lock that is no longer held (a ValueError)
    LeaseLostWarning           task_done() of an item whose lease had ended
    Interrupted                a wait ended by Connection.interrupt() (a BaseException)

Invalid arguments (a name, a maxsize) are ValueError or TypeError, an
unreachable broker ConnectionError, and an empty or full queue the
stdlib's queue.Empty and queue.Full, as Python's own queues have them."""

from __future__ import annotations

from ferry._ferry import (AuthenticationError, FerryError, Interrupted, LeaseLost, NotLeased, PermissionDenied,
                          ShutDown)

__all__ = [
    "FerryError",
    "ShutDown",
    "AuthenticationError",
    "PermissionDenied",
    "NotLeased",
    "LeaseLost",
    "LeaseLostWarning",
    "Interrupted",
    "LockLost",
    "WriteBehindError",
]


class LeaseLostWarning(RuntimeWarning):
    """task_done() of an item whose lease had ended — its connection was
    lost (a broker restart), its lease ran out, its holder was taken for
    dead in a failover: the item is delivered again and finished by
    whoever gets it (or was already), so join() stays exact. Never an
    exception in the consumer's code."""


class WriteBehindError(FerryError):
    """Write-behind puts that put() had returned for could not be
    confirmed: the broker refused them, or did not answer within a minute
    (reconnects included), or on Redis `?wait=N` replicas did not confirm
    them. `unsent` says how many; they may or may not be in the queue.
    Raised by the producer's next put(), flush(), join() or close() — and
    printed at exit — as multiprocessing reports its feeder's errors:
    never silent."""

    def __init__(self, message: str, unsent: int) -> None:
        super().__init__(message)
        self.unsent = unsent


class LockLost(FerryError, ValueError):
    """release() of a Lock this handle acquired but no longer holds: its
    connection was lost (a broker restart), or on Redis its process's
    heartbeat was overdue (the process stopped, its Redis was cut off) —
    another holder may have had it meanwhile. A ValueError, as releasing
    an unheld multiprocessing.Lock is."""


# Named from `ferry`, where they are imported (tracebacks, pickles).
for _cls in (LeaseLostWarning, WriteBehindError, LockLost):
    _cls.__module__ = "ferry"
del _cls
