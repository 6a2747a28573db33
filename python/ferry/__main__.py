"""The `ferry` command line from the wheel itself: `python -m ferry <verb>`
and the `ferry` command pip installs — the same program, flags and help
as the `ferry` binary (`python -m ferry --help` lists the verbs): serve,
put, get, done, nack, join, info, top, lock, worker, ...; and one of the
wheel's own, `work NAME`: worker processes for a ferry.Pool."""

from __future__ import annotations

import signal
import sys

from ferry._ferry import main as _main


def work(argv: list[str]) -> int:
    """python -m ferry work NAME [-j N] [--url URL]: N processes (one per
    core by default) run tasks of the ferry.Pool (or ProcessPoolExecutor)
    called NAME, from whatever machine, until SIGTERM or Ctrl-C; each
    finishes the task under way first."""
    import argparse
    import multiprocessing
    import os

    from ferry.pool import work as run_tasks

    parser = argparse.ArgumentParser(prog="python -m ferry work", description=work.__doc__)
    parser.add_argument("name", help="the pool's name (Pool(name=...))")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    parser.add_argument("--url", default=None, help="the broker (default: $FERRY_URL, else ferry://127.0.0.1:7878)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    workers = [multiprocessing.Process(target=run_tasks, kwargs={"name": args.name, "url": args.url,
                                                                "ignore_sigint": True},
                                       name=f"ferry-work-{i}")
               for i in range(args.jobs)]
    for p in workers:
        p.start()

    def stop(signum, frame):
        for p in workers:
            if p.exitcode is None:
                p.terminate()  # SIGTERM: the task under way is finished first

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in workers:
        p.join()
    return 0 if all(p.exitcode in (0, -signal.SIGTERM) for p in workers) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["work"]:
        return work(argv[1:])
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
