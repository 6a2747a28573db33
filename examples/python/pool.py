"""multiprocessing.Pool's lesson with ferry.Pool: map, imap_unordered,
apply_async with a callback, and an exception raised in a worker that
arrives in the caller with the worker's traceback. The tasks travel on a
durable queue: give the pool a name (ferry.Pool(2, name="primes")) and
any machine can lend its cores with

    python -m ferry work primes -j 8

and a worker that dies mid-task has its task run by another.

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/pool.py
"""

import ferry


def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def prime_or_none(n):
    return n if is_prime(n) else None


def checked(n):
    if n < 0:
        raise ValueError(f"{n} is negative")
    return is_prime(n)


if __name__ == "__main__":
    with ferry.Pool(2) as pool:
        flags = pool.map(is_prime, range(10_000))
        print(f"{sum(flags)} primes below 10,000")

        # As they come, in whatever order the workers finish.
        found = sorted(n for n in pool.imap_unordered(prime_or_none, range(100), chunksize=10) if n is not None)
        print(f"imap_unordered: {len(found)} primes below 100, the last {found[-1]}")
        assert len(found) == 25 and found[-1] == 97

        done = []
        pool.apply_async(is_prime, (7_919,), callback=done.append).wait()
        assert done == [True]

        try:
            pool.apply(checked, (-1,))
        except ValueError as e:
            print(f"raised in the worker, caught here: {e!r}")
            assert "raise ValueError" in e.__cause__.tb
    assert sum(flags) == 1229
