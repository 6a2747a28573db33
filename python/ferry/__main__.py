"""python -m ferry serve: a broker from the wheel itself."""

import argparse
import sys

from ferry._ferry import serve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferry")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a broker (RESP) until SIGINT/SIGTERM")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7878, help="0 picks a free one")
    s.add_argument("--data-dir", default="ferry-data")
    s.add_argument("--durability", choices=["sync", "async", "memory"], default="sync")
    s.add_argument("--unix", default=None, help="also listen on this Unix socket")
    s.add_argument("--requirepass", default=None)
    args = parser.parse_args(argv)
    serve(args.bind, args.port, args.data_dir, args.durability, args.unix, args.requirepass)
    return 0


if __name__ == "__main__":
    sys.exit(main())
