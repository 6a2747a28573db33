#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time (nightly
# Rust, cargo-fuzz installed if missing): the request parser, the reply
# parser, every command against a broker in memory, and the log as
# recovery reads it. Each run starts from the corpus in fuzz/corpus/<target>
# and writes what it finds to a temporary directory (the repository's
# corpus changes only by hand: `cargo fuzz cmin`). A crash fails the run;
# its input is kept in fuzz/artifacts/<target>/ and the command to replay
# it is printed.
#
#   scripts/fuzz.sh [seconds per target, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}

rustup toolchain list | grep -q '^nightly' || { echo "scripts/fuzz.sh needs the nightly toolchain" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz --locked

cd fuzz
# No sanitizer: the code is safe Rust (unsafe is forbidden); what the
# fuzzer looks for is a panic, an overflow (debug assertions on) or a hang.
cargo +nightly fuzz build -s none --debug-assertions
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in resp_request resp_reply command log_record; do
    mkdir -p "$work/$target"
    echo "== fuzz $target (${seconds} s)"
    status=0
    cargo +nightly fuzz run -s none --debug-assertions "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 >"$work/$target.log" 2>&1 || status=$?
    # libFuzzer's chatter stays in the log; its summary and any crash show.
    grep -E '^(Done|==[0-9]+== ERROR|SUMMARY)|panicked|Test unit written|cargo fuzz (run|tmin)' "$work/$target.log" || true
    if ((status != 0)); then
        grep -A20 panicked "$work/$target.log" >&2 || tail -30 "$work/$target.log" >&2
        echo "fuzz $target failed (exit $status): a crash, its input in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
