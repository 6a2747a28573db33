"""Regression tests, each named for the bug it pins down, against the real
broker the session fixture starts."""

import multiprocessing
import time

import pytest

import ferry


def test_raw_serializer_refuses_what_is_not_bytes():
    # put(5) used to put five zero bytes (bytes(5)).
    q = ferry.Queue(serializer="raw")
    for item in (5, "text", [1, 2], None):
        with pytest.raises(TypeError, match="raw serializer"):
            q.put(item)
    assert q.qsize() == 0
    q.put(b"ok")
    q.put(bytearray(b"ba"))
    q.put(memoryview(b"mv"))
    assert [q.get(timeout=5) for _ in range(3)] == [b"ok", b"ba", b"mv"]


def test_lock_negative_timeout_means_what_multiprocessing_means():
    # multiprocessing.Lock treats a negative timeout as 0: one try.
    mp = multiprocessing.Lock()
    mp.acquire()
    assert mp.acquire(timeout=-1) is False
    lock = ferry.Lock()
    other = ferry.Lock(name=lock._name)
    assert lock.acquire()
    t = time.monotonic()
    assert other.acquire(timeout=-1) is False
    assert other.acquire(True, -5) is False
    assert time.monotonic() - t < 60  # it used to wait forever
    lock.release()
    assert other.acquire(timeout=-1) is True
    other.release()


def test_python_m_ferry_serve_takes_the_same_flags_and_stops_quietly(tmp_path):
    # It once took six flags of ferry serve's fifteen, accepted settings
    # ferry serve refuses, and ended Ctrl-C with a traceback.
    import signal
    import subprocess
    import sys

    refused = subprocess.run(
        [sys.executable, "-m", "ferry", "serve", "--port", "0", "--max-payload", "300mb",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 1
    assert "--max-payload" in refused.stderr and "at most" in refused.stderr

    conf = tmp_path / "ferry.toml"
    conf.write_text('threads = 1\nmax_payload = "1kb"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry", "serve", "--port", "0", "--durability", "memory",
         "--config", str(conf), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening 127.0.0.1:"), line
    q = ferry.Queue(url="ferry://" + line.split()[1], serializer="raw")
    q.put(b"x" * 100)
    assert q.get(timeout=5) == b"x" * 100
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err, err
    assert "\x1b[" not in err, "no colour codes when stderr is not a terminal"
