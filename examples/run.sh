#!/usr/bin/env bash
# Runs every example against a broker started here (127.0.0.1, a free
# port, a temporary data directory), and fails if any fails.
#
#   examples/run.sh [path/to/ferry] [path/to/python] [url]
#
# Defaults: target/debug/ferry and .venv/bin/python (scripts/test.sh builds
# both). With a url (redis://..., redis+cluster://...), the examples run
# there instead, the URL their only change. Each example runs under a
# 120 s timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ferry=${1:-target/debug/ferry}
python=${2:-.venv/bin/python}
cargo build -q -p ferry-examples
work=$(mktemp -d)
if [[ -n ${3:-} ]]; then
    trap 'rm -rf "$work"' EXIT
    export FERRY_URL=$3
else
    "$ferry" serve --port 0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
    broker=$!
    trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
    for _ in $(seq 500); do [[ -s "$work/out" ]] && break; sleep 0.01; done
    export FERRY_URL="ferry://$(head -1 "$work/out" | awk '{print $2}')"
fi
failed=0
# The Python examples run under fork (Linux's default) and under spawn
# (macOS's and Windows'), which imports the main module in every child.
spawn() { "$python" -c 'import multiprocessing, runpy, sys
multiprocessing.set_start_method("spawn")
runpy.run_path(sys.argv[1], run_name="__main__")' "$1"; }
examples=(ipc producer_consumer lock_counter crash_redelivery crawler pool sem_crawler)
for ex in "${examples[@]}"; do
    kinds=(python python-spawn rust)
    [[ $ex == crawler || $ex == pool || $ex == sem_crawler ]] && kinds=(python python-spawn)   # Python only
    for kind in "${kinds[@]}"; do
        case $kind in
            python) cmd=("$python" "examples/python/$ex.py") ;;
            python-spawn) cmd=(spawn "examples/python/$ex.py") ;;
            rust) cmd=("target/debug/$ex") ;;
        esac
        if out=$(export -f spawn; export python; timeout 120 bash -c '"$@"' _ "${cmd[@]}" 2>&1); then
            echo "example $kind/$ex: ok"
        else
            echo "example $kind/$ex: FAILED"; echo "$out" | sed 's/^/    /'; failed=1
        fi
    done
done
exit $failed
