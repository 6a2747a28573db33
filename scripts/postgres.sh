#!/usr/bin/env bash
# A PostgreSQL server of its own on a loopback port, from Debian's
# postgresql package, for the tests and benchmarks.
#
#   scripts/postgres.sh start DIR [PORT]   # prints the postgres:// URL
#   scripts/postgres.sh stop DIR           # stops it by PID
#   scripts/postgres.sh kill DIR           # kill -9 of the server (a crash)
#   scripts/postgres.sh restart DIR        # starts it again, same port and data
#
# `start` runs initdb into DIR/data (as the user `nobody` when run as
# root: PostgreSQL refuses root), with a user `ferry` whose password is
# in DIR/password and a database `ferry`, then starts the server on
# 127.0.0.1:PORT (a free one if none is given) and its Unix socket in DIR,
# and waits until it answers. Durability is PostgreSQL's default
# (fsync, synchronous_commit on).
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?a directory}
port=${3:-}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "postgres.sh: no PostgreSQL server (apt-get install postgresql)" >&2; exit 1; }

# Runs a server program as the data directory's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

# Starts the server of DIR on the port it was made with; waits until it
# takes connections (after a crash: once its recovery is done).
run() {
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 120 \
        -o "-c listen_addresses=127.0.0.1 -p $(cat "$dir/port") -c unix_socket_directories=$dir -c max_connections=200" \
        start >/dev/null
}

case "$cmd" in
start)
    if [ -z "$port" ]; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/password"
    [ "$(id -u)" = 0 ] && chown -R nobody "$dir"
    chmod 700 "$dir"
    if ! as_owner test -w "$dir"; then
        echo "postgres.sh: $dir is out of reach of the user nobody (a parent directory is private): pick one under /tmp" >&2
        exit 1
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U ferry --pwfile="$dir/password" \
        --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
    echo "$port" >"$dir/port"
    run
    as_owner env PGPASSWORD="$(cat "$dir/password")" "$bin/createdb" -h "$dir" -p "$port" -U ferry ferry
    echo "postgres://ferry:$(cat "$dir/password")@127.0.0.1:$port/ferry"
    ;;
kill)
    pid=$(head -1 "$dir/data/postmaster.pid")
    kill -KILL "$pid"
    for _ in $(seq 1000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
    ;;
restart)
    # Its backends die with a killed server as they notice it gone; until
    # then its shared memory is in use and a start is refused: tried again.
    for _ in $(seq 100); do run 2>/dev/null && exit 0; sleep 0.1; done
    run
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        pid=$(head -1 "$dir/data/postmaster.pid")
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
    fi
    ;;
*)
    echo "postgres.sh: start, stop, kill or restart" >&2
    exit 2
    ;;
esac
