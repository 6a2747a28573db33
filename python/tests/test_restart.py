"""A broker restarted while calls wait: they carry on (issue 12)."""

import os
import pathlib
import socket
import subprocess
import threading
import time

import ferry

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port, data):
    binary = os.environ.get("FERRY_BIN") or str(ROOT / "target" / "debug" / "ferry")
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().startswith("listening ")
    return proc


def stop(proc):
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()


def waiting(url, name, field):
    return dict(ferry.connect(url).info(name)).get(field, 0)


def until(cond, what):
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_blocked_get_and_join_survive_a_broker_restart(tmp_path):
    port = free_port()
    url = f"ferry://127.0.0.1:{port}"
    broker = serve(port, tmp_path)
    try:
        q = ferry.JoinableQueue(name="restart", url=url)
        done = ferry.JoinableQueue(name="restart-done", url=url)
        done.put("unfinished")
        results = {}

        def get():
            results["get"] = q.get(timeout=60)
            q.task_done()

        def join():
            done.join()
            results["join"] = True

        threads = [threading.Thread(target=get), threading.Thread(target=join)]
        for t in threads:
            t.start()
        until(lambda: waiting(url, "restart", "waiting_getters") == 1, "the get")
        until(lambda: waiting(url, "restart-done", "waiting_joiners") == 1, "the join")
        for _ in range(2):
            stop(broker)
            broker = serve(port, tmp_path)
        other = ferry.JoinableQueue(name="restart", url=url)
        other.put("after two restarts")
        finisher = ferry.JoinableQueue(name="restart-done", url=url)
        finisher.get()
        finisher.task_done()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert results == {"get": "after two restarts", "join": True}
    finally:
        stop(broker)
