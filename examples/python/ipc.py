"""IPC through a queue: main -> child, then child -> child.

The classic lesson passes messages to a multiprocessing.Process through a
Queue, and between two children through one they both got from the
parent. Only the import changes; the queue lives in the broker, so the
processes could as well be on different machines.

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/ipc.py
"""

import multiprocessing as mp

import ferry


def reader(q):
    while (msg := q.get()) is not None:
        print("child got", msg)


def producer(q):
    for i in range(10):
        q.put(i)
    q.put(None)


def consumer(q, out):
    total = 0
    while (item := q.get()) is not None:
        total += item
    out.put(total)


if __name__ == "__main__":
    q = ferry.Queue()
    p = mp.Process(target=reader, args=(q,))
    p.start()
    for word in ["hello", "from", "main"]:
        q.put(word)
    q.put(None)
    p.join()
    assert p.exitcode == 0

    between, out = ferry.Queue(), ferry.Queue()
    children = [mp.Process(target=consumer, args=(between, out)), mp.Process(target=producer, args=(between,))]
    for c in children:
        c.start()
    for c in children:
        c.join()
    total = out.get(timeout=30)
    print("child -> child: the consumer summed", total)
    assert total == 45
