"""Starts the real ferry binary on port 0 for the test session."""

import contextlib
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("FERRY_BIN") or str(ROOT / "target" / "debug" / "ferry")


@contextlib.contextmanager
def serve(data_dir, *flags, http=True):
    """A broker of a test's own, on free loopback ports, stopped after:
    yields its RESP port and its HTTP port's URL (None with http=False)."""
    proc = subprocess.Popen(
        [BINARY, "serve", "--port", "0", "--http", "127.0.0.1:0" if http else "off",
         "--data-dir", str(data_dir), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        url = proc.stdout.readline().split(" ", 1)[1].strip() if http else None
        yield port, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.fixture(scope="session", autouse=True)
def broker(tmp_path_factory):
    # FERRY_TEST_URL runs the suites on another engine (redis://...):
    # scripts/test.sh starts it.
    if os.environ.get("FERRY_TEST_URL"):
        os.environ["FERRY_URL"] = os.environ["FERRY_TEST_URL"]
        yield os.environ["FERRY_URL"]
        return
    data = tmp_path_factory.mktemp("ferry-data")
    proc = subprocess.Popen(
        [BINARY, "serve", "--port", "0", "--durability", "memory", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening "), line
    port = line.rsplit(":", 1)[1].strip()
    os.environ["FERRY_URL"] = f"ferry://127.0.0.1:{port}"
    yield os.environ["FERRY_URL"]
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()
