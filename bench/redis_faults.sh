#!/usr/bin/env bash
# The Redis Cluster fault harness (crates/ferry-cli/tests/faults.rs) at
# length: PUTS puts per producer (4 producers; CI runs 300), each fault
# with and without ?wait=1, one at a time. Prints docs/backends.md's
# table rows: fault | wait | acknowledged | delivered | lost | delivered
# twice | deliveries stopped | two holders at once (lock grants).
# Needs root for the partition (iptables on loopback).
#   bench/redis_faults.sh [PUTS]
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_FAULTS_PUTS=${1:-2000} cargo test --release -p ferry-cli --test faults -- \
    --test-threads=1 --nocapture 2>&1 | grep -E '^\||^test |result'
