"""PriorityQueue orders items exactly as Python compares them — numbers of
every size and kind, dataclasses — and refuses what the stdlib could not
compare, rather than misordering it quietly."""

import dataclasses
import random
import sys
import time
from typing import Any

import pytest

import ferry
from ferry import order_key


def drain(q, n):
    return [q.get(timeout=5) for _ in range(n)]


def test_time_ns_stamps_come_out_in_time_order():
    # Integers above 2**53 inside tuples once fell back to FIFO silently.
    q = ferry.PriorityQueue()
    now = time.time_ns()
    for d in (30, 10, 20):
        q.put((now + d * 10**9, f"in {d} s"))
    assert [label for _, label in drain(q, 3)] == ["in 10 s", "in 20 s", "in 30 s"]


def numbers(rng):
    out = [0, 0.0, -0.0, True, False, float("inf"), float("-inf"), sys.float_info.min,
           5e-324, -5e-324, sys.float_info.max, -sys.float_info.max, 2**53, 2**53 + 1,
           -(2**53) - 1, 2**64, -(2**64), 2**200 + 1, -(2**200) - 1, 1, 1.5, 2, 0.1, 1 / 3]
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            out.append(rng.randrange(-(2**130), 2**130))
        elif kind == 1:
            out.append(rng.uniform(-1e6, 1e6))
        elif kind == 2:
            out.append(rng.randrange(-1000, 1000))
        else:
            out.append(float(rng.randrange(-(2**60), 2**60)) * 2.0 ** rng.randrange(-60, 60))
    return out


def test_every_number_orders_exactly_as_python_compares():
    rng = random.Random(7)
    xs = numbers(rng)
    by_key = sorted(xs, key=order_key)
    assert all(a <= b for a, b in zip(by_key, by_key[1:])), "keys sort as the numbers do"
    # Equal numbers of different kinds have equal keys (1 == 1.0 == True).
    for a, b in [(1, 1.0), (1, True), (0, -0.0), (2**53, float(2**53))]:
        assert order_key(a) == order_key(b)
    # ... and inside tuples, where the rest decides.
    pairs = [(rng.choice(xs), rng.randrange(3)) for _ in range(300)]
    by_key = sorted(pairs, key=order_key)
    assert all(a <= b for a, b in zip(by_key, by_key[1:]))


def test_the_broker_serves_them_in_that_order():
    rng = random.Random(11)
    xs = numbers(rng)[:120]
    q = ferry.PriorityQueue()
    for x in xs:
        q.put(x)
    got = drain(q, len(xs))
    assert got == sorted(got) and sorted(got) == sorted(xs)


@dataclasses.dataclass(order=True)
class Job:
    priority: int
    deadline: float
    item: Any = dataclasses.field(compare=False)


def test_dataclass_items_order_by_their_compared_fields():
    q = ferry.PriorityQueue()
    jobs = [Job(2, 1.0, "c"), Job(1, 9.5, {"not": "comparable"}), Job(1, 2.5, "a"), Job(2**70, 0.0, "z")]
    for j in jobs:
        q.put(j)
    assert drain(q, len(jobs)) == sorted(jobs)


def test_what_the_stdlib_cannot_compare_is_refused_not_misordered():
    q = ferry.PriorityQueue()
    q.put((1, "a"))
    with pytest.raises(TypeError, match=r"ordered as \(ns\)"):
        q.put(("x", "b"))  # the stdlib: '<' not supported between str and int
    q.put((2, "c"))  # the same shape is fine
    with pytest.raises(TypeError, match="cannot order"):
        q.put(object())
    with pytest.raises(TypeError, match="cannot order"):
        q.put(float("nan"))

    @dataclasses.dataclass
    class Unordered:
        x: int

    with pytest.raises(TypeError, match="cannot order"):
        q.put(Unordered(1))
    # Another process's handle is refused too: the broker keeps the type.
    other = ferry.PriorityQueue(name=q.name)
    with pytest.raises(TypeError):
        other.put("str")
    # Once empty, the queue takes any type, as the stdlib's does.
    assert drain(q, 2) == [(1, "a"), (2, "c")]
    q.put("now strings")
    assert q.get(timeout=5) == "now strings"
