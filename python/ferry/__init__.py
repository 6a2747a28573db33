"""ferry: Python's queue and multiprocessing queues, across processes and machines.

    >>> import ferry
    >>> q = ferry.JoinableQueue(name="jobs", maxsize=5)   # a named, shared queue
    >>> q.put({"photo": 1})                                 # pickled by default
    >>> item = q.get()                                      # leased: redelivered if this process dies
    >>> q.task_done()
    >>> q.join()

The broker is found at FERRY_URL, else ferry://127.0.0.1:7878.

The package is laid out as multiprocessing is: queues.py (the queues),
synchronize.py (Lock, RLock, Semaphore,
BoundedSemaphore, Event, Condition, Barrier), pool.py (Pool), executor.py
(ProcessPoolExecutor), exceptions.py, and what they share — lanes.py (a
handle's connections, one per thread), feeder.py (write-behind puts),
ordering.py (a PriorityQueue's keys), util.py (finalizers, the fork
generation, the URL).
"""

from __future__ import annotations

from ferry._ferry import Connection
from ferry.exceptions import (
    AuthenticationError,
    FerryError,
    Interrupted,
    LeaseLost,
    LeaseLostWarning,
    LockLost,
    NotLeased,
    PermissionDenied,
    ShutDown,
    WriteBehindError,
)
from ferry.feeder import AUTO_WRITE_BEHIND, AUTO_WRITE_BEHIND_BYTES, AUTO_WRITE_BEHIND_ITEM
from ferry.lanes import AUTO_PREFETCH, FAST_GET, IDLE_GIVE_BACK
from ferry.ordering import order_key, order_key_and_type
from ferry.queues import (
    PRIVATE_EXPIRE_MS,
    Empty,
    Full,
    JoinableQueue,
    LifoQueue,
    PriorityQueue,
    Queue,
    SimpleQueue,
)
from ferry.executor import ProcessPoolExecutor
from ferry.pool import Pool
from ferry.synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore
from ferry.util import DEFAULT_URL, connect

__all__ = [
    "Queue",
    "JoinableQueue",
    "LifoQueue",
    "PriorityQueue",
    "SimpleQueue",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "Pool",
    "ProcessPoolExecutor",
    "ShutDown",
    "FerryError",
    "AuthenticationError",
    "PermissionDenied",
    "LeaseLost",
    "LeaseLostWarning",
    "Interrupted",
    "LockLost",
    "NotLeased",
    "WriteBehindError",
    "Empty",
    "Full",
    "connect",
    "DEFAULT_URL",
]
