"""A counter in a file, updated by 4 processes under ferry.Lock -- the
multiprocessing.Lock lesson -- with no lost update.

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/lock_counter.py
"""

import multiprocessing as mp
import os
import tempfile
import time

import ferry

PROCESSES, INCREMENTS = 4, 50


def work(lock, path):
    for _ in range(INCREMENTS):
        with lock:
            # Read, then write: without the lock two processes would read
            # the same value and one update would be lost.
            with open(path) as f:
                n = int(f.read())
            time.sleep(0)
            with open(path, "w") as f:
                f.write(str(n + 1))


if __name__ == "__main__":
    fd, path = tempfile.mkstemp(prefix="ferry-counter-")
    os.write(fd, b"0")
    os.close(fd)
    lock = ferry.Lock()
    workers = [mp.Process(target=work, args=(lock, path)) for _ in range(PROCESSES)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    with open(path) as f:
        n = int(f.read())
    os.remove(path)
    print(f"{PROCESSES} processes x {INCREMENTS} increments: counter = {n}")
    assert n == PROCESSES * INCREMENTS
