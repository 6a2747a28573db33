"""A crawler whose worker processes share one cap: at most 3 fetches at
once, however many workers run and on however many machines
(ferry.BoundedSemaphore), and every worker starts together
(ferry.Event) and finishes its phase before the report (ferry.Barrier).

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/sem_crawler.py

A worker that dies mid-fetch gives its permit back: the cap never
shrinks for a crash.
"""

import multiprocessing as mp
import time

import ferry

WORKERS, PAGES, CAP = 6, 36, 3


def fetch(url):
    time.sleep(0.02)  # stands in for an HTTP request
    return len(url)


def work(jobs, sizes, cap, go, done, inflight, peak):
    go.wait()
    while (url := jobs.get()) is not None:
        with cap:  # at most CAP of these at once, everywhere
            with inflight.get_lock():
                inflight.value += 1
                peak.value = max(peak.value, inflight.value)
            size = fetch(url)
            with inflight.get_lock():
                inflight.value -= 1
        sizes.put((url, size))
        jobs.task_done()
    jobs.task_done()
    done.wait()  # every worker's last fetch is over


if __name__ == "__main__":
    jobs, sizes = ferry.JoinableQueue(), ferry.Queue()
    cap = ferry.BoundedSemaphore(CAP)
    go = ferry.Event()
    done = ferry.Barrier(WORKERS + 1)
    inflight, peak = mp.Value("i", 0), mp.Value("i", 0)
    workers = [mp.Process(target=work, args=(jobs, sizes, cap, go, done, inflight, peak))
               for _ in range(WORKERS)]
    for w in workers:
        w.start()
    for i in range(PAGES):
        jobs.put(f"https://example.org/page/{i}")
    for _ in workers:
        jobs.put(None)
    go.set()  # all start together
    done.wait()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    got = sorted(sizes.get(timeout=10) for _ in range(PAGES))
    assert len(got) == PAGES and peak.value <= CAP, (len(got), peak.value)
    print(f"{WORKERS} workers fetched {PAGES} pages, at most {peak.value} at once (cap {CAP})")
