"""A consumer killed with SIGKILL in the middle of its task: the broker
delivers the task again, so join() returns -- where
multiprocessing.JoinableQueue would hang forever.

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/crash_redelivery.py
"""

import multiprocessing as mp
import os
import signal
import time

import ferry


def doomed(jobs, started):
    print("doomed consumer started", jobs.get())
    started.set()
    time.sleep(60)  # killed before task_done()


def survivor(jobs):
    task = jobs.get()
    print("survivor got", task)
    jobs.task_done()


if __name__ == "__main__":
    jobs = ferry.JoinableQueue()
    jobs.put("resize photo 17")
    started = mp.Event()
    p = mp.Process(target=doomed, args=(jobs, started))
    p.start()
    assert started.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    mp.Process(target=survivor, args=(jobs,)).start()
    jobs.join()
    print("join returned after the consumer was killed")
