#!/usr/bin/env python3
"""The broker under hostile clients: its resident memory, and a normal
client's PING latency alongside, for each mix in turn —

- idle: connections that never authenticate;
- slowloris: connections that drip an AUTH one byte a second;
- pre-auth pipelines: connections that pipeline commands before AUTH;
- wrong passwords: connections that send three wrong ones each;
- a user filling its quota: 16 MiB puts by a user with max_bytes, until
  refused; then an operator's QDROP, and the memory after it.

Each row prints the RSS while the mix runs and the PING p50 / p99 / max
of one authenticated connection pinging in a loop meanwhile. The broker
runs with its defaults (--auth-timeout 10, --max-memory half the
machine's) and an ACL file.

    .venv/bin/python bench/hostile.py            # the full mixes
    .venv/bin/python bench/hostile.py --quick    # smaller, for CI

Needs the release binary (`cargo build --release -p ferry-cli`, or
FERRY_BIN); the broker listens on free loopback ports and is stopped after.
"""

import argparse
import os
import pathlib
import socket
import subprocess
import tempfile
import threading
import time

PASSWORD = "bench-ops-pw"


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    """A RESP connection that reads one reply line at a time (enough for
    PING, AUTH and QPUT)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")

    def cmd(self, *args):
        self.s.sendall(resp(*args))
        return self.f.readline()

    def close(self):
        self.s.close()


def hash_password(binary, password):
    out = subprocess.run([binary, "hash-password"], input=password + "\n",
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


class Pinger:
    """An authenticated client pinging in a loop; its latencies per mix."""

    def __init__(self, port, user, password):
        self.c = Conn(port)
        assert self.c.cmd("AUTH", user, password) == b"+OK\r\n"
        self.lat = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            t = time.perf_counter()
            assert self.c.cmd("PING") == b"+PONG\r\n"
            self.lat.append(time.perf_counter() - t)
            time.sleep(0.001)

    def take(self):
        lat, self.lat = sorted(self.lat), []
        if not lat:
            return (0.0, 0.0, 0.0)
        pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000
        return (pick(0.5), pick(0.99), lat[-1] * 1000)

    def close(self):
        self.stop.set()
        self.t.join()
        self.c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent
    binary = os.environ.get("FERRY_BIN", str(root / "target/release/ferry"))
    n_idle, n_drip, n_pipe, quota_mb, hold = (
        (200, 100, 20, 64, 2.0) if args.quick else (5000, 500, 100, 1024, 5.0))

    with tempfile.TemporaryDirectory() as tmp:
        acl = pathlib.Path(tmp, "acl.toml")
        acl.write_text(
            f'[users.ops]\npassword_hash = "{hash_password(binary, PASSWORD)}"\n'
            'put = ["*"]\nget = ["*"]\nadmin = ["*"]\n\n'
            f'[users.public]\npassword_hash = "{hash_password(binary, "public-pw")}"\n'
            f'put = ["pub.*"]\nmax_bytes = "{quota_mb}mb"\n')
        proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--http", "off", "--acl-file", str(acl),
             "--data-dir", str(pathlib.Path(tmp, "data"))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(proc.stdout.readline().rsplit(":", 1)[1])
            pinger = Pinger(port, "ops", PASSWORD)
            rows = []

            def row(name, during):
                rows.append((name, rss_mib(proc.pid), *pinger.take(), during))

            time.sleep(hold)
            row("baseline", "")

            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(n_idle)]
            time.sleep(hold)
            row(f"{n_idle} idle strangers", "")
            for s in idle:
                s.close()

            drip = [socket.create_connection(("127.0.0.1", port)) for _ in range(n_drip)]
            msg = resp("AUTH", "ops", "wrong-password")
            stop = time.monotonic() + hold
            i = 0
            while time.monotonic() < stop:
                for s in drip:
                    try:
                        s.send(msg[i % len(msg):][:1])
                    except OSError:
                        pass
                i += 1
                time.sleep(1)
            row(f"{n_drip} slowloris (1 B/s)", "")
            for s in drip:
                s.close()

            pipes = [socket.create_connection(("127.0.0.1", port)) for _ in range(n_pipe)]
            burst = resp("PING") * 4000
            stop = time.monotonic() + hold
            sent = 0
            while time.monotonic() < stop:
                for s in pipes:
                    try:
                        s.setblocking(False)
                        sent += s.send(burst)
                    except OSError:
                        pass
                time.sleep(0.01)
            row(f"{n_pipe} pre-auth pipelines", f"{sent / 1e6:.0f} MB sent")
            for s in pipes:
                s.close()

            # Wrong passwords: each costs an argon2 check (tens of ms by
            # design), off the broker's workers.
            guessers = [socket.create_connection(("127.0.0.1", port)) for _ in range(n_pipe)]
            for i, g in enumerate(guessers):
                g.sendall(b"".join(resp("AUTH", "ops", f"guess-{i}-{k}") for k in range(3)))
            time.sleep(hold)
            row(f"{n_pipe} x 3 wrong passwords", "")
            for g in guessers:
                g.close()

            public = Conn(port)
            assert public.cmd("AUTH", "public", "public-pw") == b"+OK\r\n"
            payload = os.urandom(16 << 20)
            accepted, reply = 0, b""
            while accepted < 10_000:
                reply = public.cmd("QPUT", "pub.fill", payload)
                if not reply.startswith(b":"):
                    break
                accepted += 1
            row(f"a user filling max_bytes {quota_mb} MB",
                f"{accepted} x 16 MiB puts, then {reply.decode().split(' ')[0].strip()}")
            ops = Conn(port)
            assert ops.cmd("AUTH", "ops", PASSWORD) == b"+OK\r\n"
            ops.cmd("QDROP", "pub.fill")
            time.sleep(15)
            row("15 s after QDROP", "")
            public.close()
            ops.close()
            pinger.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    print(f"{'mix':<34} {'RSS MiB':>8} {'PING p50 ms':>12} {'p99 ms':>8} {'max ms':>8}  notes")
    for name, rss, p50, p99, mx, note in rows:
        print(f"{name:<34} {rss:>8.1f} {p50:>12.3f} {p99:>8.3f} {mx:>8.2f}  {note}")


if __name__ == "__main__":
    main()
