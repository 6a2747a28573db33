#!/usr/bin/env bash
# Every test of the project, from a fresh clone. README.md names this as the
# test command; .ci/run calls it after the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The broker's tests drive it with redis-cli, and bench/ compares it with
# redis-server, beanstalkd and nats-server: all from Debian's packages.
if ! command -v redis-cli >/dev/null || ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
    || ! command -v beanstalkd >/dev/null || ! command -v nats-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools beanstalkd nats-server >/dev/null
fi

# Unit, integration and doc tests of every crate.
cargo test --workspace

# Benchmarks compile and run once each (criterion's test mode), so that
# they keep working; bench/ holds the full runs.
cargo test -p ferry-core --bench inprocess

# The Python package: built into a virtualenv with maturin, then pytest
# against the real broker (the binary built above).
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# redis: the asyncio benchmark's peer (redis.asyncio); uvloop: ferry.aio runs on it.
.venv/bin/pip install -q --disable-pip-version-check maturin pytest matplotlib redis uvloop
cargo build -q -p ferry-cli
(cd python && ../.venv/bin/maturin develop --release -q && ../.venv/bin/python -m pytest -p no:cacheprovider)

# examples/: the classic multiprocessing lessons as Python and Rust
# programs, each run against a broker started by the script.
examples/run.sh target/debug/ferry .venv/bin/python

# The peer benchmark harness in its quick mode (a few thousand messages
# per peer, debug builds), so that it keeps working; bench/run.sh without
# --quick is the full run that regenerates BENCHMARKS.md.
bench/run.sh --quick

# The blocking in-process tier under shuttle's scheduler (fixed seed,
# bounded iterations). The feature swaps the tier's primitives, so it runs
# alone.
cargo test -p ferry-core --features shuttle --test shuttle
