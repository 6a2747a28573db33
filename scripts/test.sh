#!/usr/bin/env bash
# Every test of the project, from a fresh clone. README.md names this as the
# test command; .ci/run calls it after the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's start, with the time since this script began: CI's run must
# stay under 25 minutes on 2 cores, and these lines show where it goes.
stage() { echo "== [$(date +%T), +$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

# The broker's tests drive it with redis-cli, bench/ compares it with
# redis-server, beanstalkd and nats-server, the dashboard's test opens it
# in a headless chromium, the Redis fault tests cut a node off with
# iptables, and the PostgreSQL engine's tests start servers of their own
# (scripts/postgres.sh: initdb, pg_ctl; psql): all from Debian's packages.
if ! command -v redis-cli >/dev/null || ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
    || ! command -v beanstalkd >/dev/null || ! command -v nats-server >/dev/null || ! command -v chromium >/dev/null \
    || ! command -v iptables >/dev/null || ! command -v psql >/dev/null \
    || ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools beanstalkd nats-server chromium iptables \
        postgresql >/dev/null
fi

stage "cargo test"
# Unit, integration and doc tests of every crate.
cargo test --workspace

stage "criterion test mode"
# Benchmarks compile and run once each (criterion's test mode), so that
# they keep working; bench/ holds the full runs.
cargo test -p ferry-core --bench inprocess

stage "python package: pip, maturin, pytest on the broker"
# The Python package: built into a virtualenv with maturin, then pytest
# against the real broker (the binary built above). The dev profile, as
# the binary: it reuses what `cargo test` compiled (30 s where a release
# build takes over 3 minutes), and the suites take as long either way;
# bench/run.sh builds it in release for its full run.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# redis: the asyncio benchmark's peer (redis.asyncio); uvloop: ferry.aio runs on it;
# prometheus_client parses /metrics; playwright drives Debian's chromium
# (its executable path: no browser download) and pillow reads its screenshot;
# psycopg 3 and psycopg2 carry puts inside a caller's PostgreSQL transaction.
.venv/bin/pip install -q --disable-pip-version-check maturin pytest pytest-timeout matplotlib redis uvloop \
    prometheus_client playwright pillow "psycopg[binary]" psycopg2-binary
cargo build -q -p ferry-cli
(cd python && ../.venv/bin/maturin develop -q && ../.venv/bin/python -m pytest -p no:cacheprovider)
stage "the wheel"
# The wheel as a user gets it (the same compile as above; a release wheel
# holds the same files): installed into a fresh virtualenv, `python -m
# ferry serve` and README.md's examples run.
rm -rf target/wheels-ci
(cd python && ../.venv/bin/maturin build -q --out ../target/wheels-ci)
scripts/check-wheel.sh target/wheels-ci/*.whl

stage "pytest and examples on redis-server"
# The same Python suites on the Redis backend (redis://): a redis-server
# of its own on a free loopback port, without persistence, stopped by PID.
# Leases of 2 s, so that a killed consumer's messages come back quickly.
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis_dir=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$redis_dir" \
    --daemonize no >"$redis_dir/log" 2>&1 &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true; rm -rf "$redis_dir"' EXIT
for _ in $(seq 500); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.01; done
(cd python && FERRY_TEST_URL="redis://127.0.0.1:$redis_port?lease=2000" ../.venv/bin/python -m pytest -p no:cacheprovider)
examples/run.sh target/debug/ferry .venv/bin/python "redis://127.0.0.1:$redis_port?lease=2000"
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true

stage "pytest and examples on a Redis Cluster"
# And on a Redis Cluster (redis+cluster://): 3 primaries, 3 replicas, on
# loopback ports of our choosing (a block below the kernel's ephemeral
# range whose ports and buses are all free: the script's PORT option, as
# docs/backends.md shows it), stopped by PID (scripts/redis-cluster.sh).
cluster_dir=$(mktemp -d)
trap 'kill $redis_pid 2>/dev/null || true; scripts/redis-cluster.sh stop "$cluster_dir"; rm -rf "$redis_dir" "$cluster_dir"' EXIT
cluster_port=$(python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    base = random.randrange(21000, 22000)
    if all(free(p) and free(p + 10000) for p in range(base, base + 6)):
        print(base)
        break
PY
)
cluster_url=$(scripts/redis-cluster.sh start "$cluster_dir" "$cluster_port")
(cd python && FERRY_TEST_URL="$cluster_url?lease=2000" ../.venv/bin/python -m pytest -p no:cacheprovider)
examples/run.sh target/debug/ferry .venv/bin/python "$cluster_url?lease=2000"

stage "pytest on PostgreSQL (the suites of what it answers)"
# The PostgreSQL engine (postgres://, in progress: docs/backends.md) under
# the suites of what it answers today — queues blocking and across
# processes, CPython's queue tests, locks, errors, Ctrl-C — on a server
# of its own (scripts/postgres.sh: initdb as a non-root user, a free
# loopback port), stopped by PID. The others join as the engine grows.
pg_dir=$(mktemp -d)
trap 'kill $redis_pid 2>/dev/null || true; scripts/redis-cluster.sh stop "$cluster_dir"; scripts/postgres.sh stop "$pg_dir"; rm -rf "$redis_dir" "$cluster_dir" "$pg_dir"' EXIT
pg_url=$(scripts/postgres.sh start "$pg_dir")
(cd python && FERRY_TEST_URL="$pg_url?lease=2000" ../.venv/bin/python -m pytest -p no:cacheprovider \
    tests/test_queue.py tests/test_cpython_queue.py tests/test_priority.py tests/test_mp_queue.py \
    tests/test_errors.py tests/test_names.py tests/test_leftovers.py tests/test_regressions.py \
    tests/test_fast_paths.py tests/test_interrupt.py)
scripts/postgres.sh stop "$pg_dir"

stage "examples on the broker"
# examples/: the classic multiprocessing lessons as Python and Rust
# programs, each run against a broker started by the script.
examples/run.sh target/debug/ferry .venv/bin/python

stage "bench quick modes"
# The peer benchmark harness in its quick mode (a few thousand messages
# per peer, debug builds), so that it keeps working; bench/run.sh without
# --quick is the full run that regenerates BENCHMARKS.md.
bench/run.sh --quick
bench/metrics.sh --quick
FERRY_BIN=target/debug/ferry .venv/bin/python bench/checkpoint_stall.py --quick
FERRY_BIN=target/debug/ferry .venv/bin/python bench/hostile.py --quick

stage "shuttle"
# The blocking in-process tier under shuttle's scheduler (fixed seed,
# bounded iterations). The feature swaps the tier's primitives, so it runs
# alone.
cargo test -p ferry-core --features shuttle --test shuttle

stage "fuzz corpus"
# Every input of the fuzz targets' corpus (fuzz/: request and reply
# parsers, every command, the log as recovery reads it) replayed on
# stable through the targets' own entry points. The search for new
# inputs — scripts/fuzz.sh, timed, on nightly — is a long run: its build
# alone takes longer than this whole stage.
cargo test -p ferry-server --features fuzzing --test fuzz_corpus
stage "done"
