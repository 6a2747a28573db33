"""The whole `ferry` command line from the wheel: `python -m ferry <verb>`
and the `ferry` command pip installs, the same program as the binary."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import ferry
from conftest import BINARY

pytestmark = pytest.mark.skipif(
    os.environ.get("FERRY_TEST_URL", "").startswith("redis"),
    reason="the command line is the same on every engine; once is enough",
)


def py_ferry(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_python_m_ferry_is_the_binary_s_command_line():
    # The same help, verb for verb, as the ferry binary's.
    for args in (["--help"], ["put", "--help"], ["worker", "--help"]):
        ours, theirs = py_ferry(*args), subprocess.run([BINARY, *args], capture_output=True, text=True)
        assert ours.returncode == theirs.returncode == 0
        assert ours.stdout == theirs.stdout
    assert "put" in py_ferry("--help").stdout and "worker" in py_ferry("--help").stdout


def test_every_verb_works_from_the_wheel(broker):
    q = f"cli-{os.getpid()}"
    put = py_ferry("put", q, "hello")
    assert put.returncode == 0, put.stderr
    assert py_ferry("get", q).stdout == "hello\n"
    # Exit codes and messages as the binary's.
    empty = py_ferry("get", q, "--timeout", "0.1")
    assert empty.returncode == 4
    assert empty.stderr == f'ferry: queue "{q}" stayed empty\n'
    assert py_ferry("put", "bad name", "x").returncode == 2
    info = py_ferry("info", q, "--json")
    assert '"put":1' in info.stdout.replace(" ", "")
    # The command pip puts on PATH, beside the interpreter.
    script = pathlib.Path(sys.executable).parent / "ferry"
    assert script.exists(), "pip installs a ferry command"
    out = subprocess.run([str(script), "put", q, "from the script"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert ferry.Queue(name=q, serializer="raw").get(timeout=5) == b"from the script"


def test_ferry_worker_from_the_wheel_runs_tasks_and_stops_cleanly(broker, tmp_path):
    # Each task runs under `python -m ferry __shim`: the wheel needs no binary.
    q = f"work-{os.getpid()}"
    out = tmp_path / "done"
    worker = subprocess.Popen(
        [sys.executable, "-m", "ferry", "worker", q, "-j", "2", "--", "sh", "-c", f"cat >> {out}; echo >> {out}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        for i in range(4):
            assert py_ferry("put", q, f"task{i}").returncode == 0
        c = ferry.connect()
        deadline = time.monotonic() + 60
        while dict(c.info(q)).get("done", 0) < 4:
            assert time.monotonic() < deadline, "the tasks were not done"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert sorted(out.read_text().split()) == [f"task{i}" for i in range(4)]
