"""The `ferry` command line from the wheel itself: `python -m ferry <verb>`
and the `ferry` command pip installs — the same program, flags and help
as the `ferry` binary (`python -m ferry --help` lists the verbs): serve,
put, get, done, nack, join, info, top, lock, worker, ..."""

from __future__ import annotations

import signal
import sys

from ferry._ferry import main as _main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"] or argv[:1] == ["worker"]:
        # The broker and the worker handle SIGINT and SIGTERM themselves (a
        # clean stop); Python's own SIGINT handler still runs beside them,
        # and a quiet one keeps Ctrl-C from ending in a traceback.
        signal.signal(signal.SIGINT, lambda signum, frame: None)
    else:
        # Every other verb ends at Ctrl-C, as the binary does.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    # `ferry worker` runs each task under this same command line again.
    return _main(argv, [sys.executable, "-m", "ferry"])


if __name__ == "__main__":
    sys.exit(main())
