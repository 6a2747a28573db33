"""python -m ferry serve: a broker from the wheel itself, with the same
flags as `ferry serve` (see `python -m ferry serve --help`)."""

import signal
import sys

from ferry._ferry import serve

USAGE = "usage: python -m ferry serve [FLAGS]   (python -m ferry serve --help lists them)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "serve":
        print(USAGE, file=sys.stderr)
        return 2
    # The broker handles SIGINT and SIGTERM itself (a clean stop, status 0).
    # Python's own SIGINT handler still runs beside it; a quiet one keeps
    # Ctrl-C from ending in a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    return serve(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
