"""Python 3.13's queue.ShutDown: ferry.ShutDown is one (a subclass) where
the stdlib has it, so `except queue.ShutDown` catches it."""

import os
import queue
import shutil
import subprocess
import sys

import pytest

import ferry


def test_shutdown_is_queue_shutdown_where_the_stdlib_has_it():
    assert issubclass(ferry.ShutDown, ferry.FerryError)
    if hasattr(queue, "ShutDown"):
        assert issubclass(ferry.ShutDown, queue.ShutDown)
    q = ferry.Queue()
    q.shutdown()
    with pytest.raises(ferry.ShutDown):
        q.put(1)


def python313():
    """A Python 3.13 that runs: on PATH, or one pyenv installed."""
    import glob

    candidates = [shutil.which("python3.13")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")))
    for c in candidates:
        if c and subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0:
            return c
    return None


PY313 = python313()


@pytest.mark.skipif(PY313 is None, reason="no python3.13 interpreter on this machine")
def test_under_python_3_13_except_queue_shutdown_catches_it():
    # The extension is built for the stable ABI (3.9+): the same module
    # loads under 3.13, where queue.ShutDown exists.
    script = (
        "import queue, ferry\n"
        "q = ferry.Queue()\n"
        "q.shutdown()\n"
        "try:\n"
        "    q.get()\n"
        "except queue.ShutDown as e:\n"
        "    print('caught', type(e).__mro__[1].__name__, isinstance(e, ferry.FerryError))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ferry.__file__)))
    out = subprocess.run([PY313, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "caught FerryError True", (out.stdout, out.stderr)


@pytest.mark.skipif(PY313 is None, reason="no python3.13 interpreter on this machine")
def test_under_python_3_13_the_asyncio_port_passes_with_asyncio_queue_shutdown():
    # test_aio_cpython.py is plain unittest: under 3.13 its shutdown tests
    # expect asyncio.QueueShutDown itself.
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ferry.__file__)))
    out = subprocess.run([PY313, "-m", "unittest", "-q", "test_aio_cpython"], cwd=tests, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Ran 156 tests" in out.stderr, out.stderr[-3000:]
    check = "import asyncio, ferry.aio; print(issubclass(ferry.aio.ShutDown, asyncio.QueueShutDown))"
    out = subprocess.run([PY313, "-c", check], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
