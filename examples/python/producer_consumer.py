"""The producer-consumer model: 2 producers, 2 daemon consumers that never
return, and JoinableQueue.join() as the only way to know every task is
done -- the classic multiprocessing lesson, with ferry's queues.

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/producer_consumer.py
"""

import multiprocessing as mp

import ferry


def produce(jobs, start):
    for i in range(start, start + 50):
        jobs.put(i)


def consume(jobs, results):
    while True:
        x = jobs.get()  # leased: redelivered if this process dies first
        results.put(x * x)
        jobs.task_done()


if __name__ == "__main__":
    jobs, results = ferry.JoinableQueue(), ferry.Queue()
    for _ in range(2):
        mp.Process(target=consume, args=(jobs, results), daemon=True).start()
    producers = [mp.Process(target=produce, args=(jobs, k * 50)) for k in range(2)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    jobs.join()
    total = sum(results.get_nowait() for _ in range(100))
    print("join returned; the sum of 100 squares is", total)
    assert total == sum(i * i for i in range(100))
    # The daemon consumers die with the main process.
