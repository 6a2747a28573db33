"""Opening a queue by name: without settings a handle attaches to the
queue as it is; settings given that differ are an error naming them."""

import uuid

import pytest

import ferry


def fresh():
    return f"names-{uuid.uuid4().hex}"


def test_a_name_without_settings_attaches_to_the_queue_as_it_is():
    name = fresh()
    first = ferry.JoinableQueue(name=name, maxsize=100)
    other = ferry.Queue(name=name)  # once: EXISTS queue exists with different settings
    assert other.maxsize == 100
    other.put("x")
    assert first.get(timeout=5) == "x"
    first.task_done()


def test_settings_given_that_differ_name_the_setting_and_both_values():
    name = fresh()
    ferry.Queue(maxsize=100, name=name)
    with pytest.raises(ValueError, match=r"maxsize 100, not 5"):
        ferry.Queue(maxsize=5, name=name)
    with pytest.raises(ValueError, match=r"kind fifo, not priority"):
        ferry.PriorityQueue(name=name)
    # The same settings are fine.
    assert ferry.Queue(maxsize=100, name=name).maxsize == 100


def test_maxsize_zero_or_less_is_unbounded_as_in_the_stdlib():
    q = ferry.Queue(maxsize=-1)
    assert q.maxsize == -1
    for i in range(10):
        q.put_nowait(i)
    assert not q.full()
    q.maxsize = -5
    assert q.maxsize == -5 and not q.full()


def test_a_pickled_handle_attaches_to_the_queue_as_it_is_then():
    import pickle

    q = ferry.Queue(maxsize=3)
    copy = pickle.loads(pickle.dumps(q))
    q.maxsize = 7  # changed after pickling: the copy still attaches
    again = pickle.loads(pickle.dumps(copy))
    assert again.maxsize == 7


def test_stdlib_exceptions_are_raised_as_the_stdlib_raises_them():
    import queue

    q = ferry.Queue(1)
    with pytest.raises(queue.Empty) as e:
        q.get_nowait()
    assert e.value.args == ()
    q.put(1)
    with pytest.raises(queue.Full) as e:
        q.put_nowait(2)
    assert e.value.args == ()
