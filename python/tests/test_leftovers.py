"""What a program leaves behind in the broker: a private (unnamed) queue
goes when its program is done with it; a named one stays, and can be
purged, dropped or reopened."""

import gc
import os
import pickle
import subprocess
import sys
import textwrap

import ferry


def names():
    return {n.decode() for n in ferry.connect().call([b"QLIST"])}


def run(script, tmp_path):
    # A file, not -c: spawned children import the main module by path.
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ferry.__file__)))
    out = subprocess.run([sys.executable, str(path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_private_queue_is_gone_once_its_program_exits(tmp_path):
    name = run("""
        import ferry
        q = ferry.Queue()
        q.put("left behind")
        print(q.name)
    """, tmp_path)
    assert name.startswith("py-") and name not in names()


def test_a_private_queue_outlives_its_children_then_goes(tmp_path):
    # The parent puts and leaves at once; multiprocessing joins its child
    # at exit, and only then is the queue dropped.
    result = tmp_path / "child-got"
    name = run(f"""
        import multiprocessing, time, ferry

        def child(q, path):
            time.sleep(0.2)  # still running when the parent reaches its exit
            with open(path, "w") as f:
                f.write(q.get(timeout=60))

        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            q = ferry.Queue()
            multiprocessing.Process(target=child, args=(q, {str(result)!r})).start()
            q.put("from the parent")
            print(q.name)
    """, tmp_path)
    assert result.read_text() == "from the parent"
    assert name not in names()


def test_a_private_queue_goes_with_its_last_handle():
    q = ferry.Queue()
    name = q.name
    copy = pickle.loads(pickle.dumps(q))  # a second handle in this process
    del q
    gc.collect()
    assert name in names(), "the copy still uses it"
    copy.put(1)
    del copy
    gc.collect()
    assert name not in names()


def test_a_private_queue_has_the_broker_drop_it_if_its_program_is_killed():
    q = ferry.Queue()
    info = dict(ferry.connect().info(q.name))
    assert info["expire"] == ferry.PRIVATE_EXPIRE_MS


def test_named_queues_stay_and_can_be_purged_dropped_and_reopened():
    name = f"stays-{os.getpid()}"
    q = ferry.Queue(name=name)
    for i in range(3):
        q.put(i)
    del q
    gc.collect()
    q = ferry.Queue(name=name)
    assert q.qsize() == 3, "a named queue keeps its backlog"
    assert q.purge() == 3
    q.shutdown()
    again = ferry.Queue(name=name)
    assert again.is_shutdown, "a shutdown lasts for later programs"
    again.reopen()
    again.put("accepted")
    assert not q.is_shutdown
    q.drop()
    assert name not in names()


def test_a_handle_collected_inside_a_locked_section_is_finished_after_it(tmp_path):
    # The garbage collector may run a collected handle's finalizer inside
    # any allocation, so also inside one of the package's own locked
    # sections (the registry's, a lane's: the prefetch reaper settles
    # lanes under their lock). The finalizer must not wait for that lock
    # there (it waited forever): its work runs once the section ends.
    out = run("""
        import gc, time
        import ferry

        def queues():
            return {n.decode() for n in ferry.connect().call([b"QLIST"])}

        def until(cond):
            deadline = time.monotonic() + 30
            while not cond():
                assert time.monotonic() < deadline
                time.sleep(0.01)

        # The registry's lock: a private queue's handle, in a cycle.
        q = ferry.Queue()
        name = q.name
        cycle = [q]
        cycle.append(cycle)
        del q, cycle
        with ferry.util._private_lock:
            gc.collect()
            still = name in queues()
        until(lambda: name not in queues())

        # A lane's lock: a prefetching consumer's handle, in a cycle, holding
        # items fetched ahead; collected while its lane is locked.
        producer = ferry.JoinableQueue(name="lane-" + name, write_behind=0)
        for i in range(20):
            producer.put(i)
        consumer = ferry.JoinableQueue(name="lane-" + name, prefetch=10)
        consumer.get()
        consumer.task_done()
        lane = consumer._handle.lane()
        held = len(lane.fetched)
        cycle = [consumer]
        cycle.append(cycle)
        del consumer, cycle
        with lane.lock:
            gc.collect()
        until(lambda: producer.qsize() == 19)
        producer.drop()
        print(still, held)
    """, tmp_path)
    assert out == "True 9"
