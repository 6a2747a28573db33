#!/usr/bin/env bash
# The in-process JoinableQueue against crossbeam-channel's bounded channel and
# std's sync_channel, measured in one criterion run, printed as throughput
# ratios (ferry / peer; above 1.0 means ferry is faster).
#
#   bench/inprocess.sh            full run (about a minute)
#   bench/inprocess.sh --quick    criterion's quick mode, for a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

extra=()
if [[ "${1:-}" == "--quick" ]]; then
    extra=(--warm-up-time 1 --measurement-time 1 --sample-size 10)
fi
cargo bench -p ferry-core --bench inprocess -- "${extra[@]}" >&2

python3 - <<'PY'
import json, pathlib
root = pathlib.Path("target/criterion")
def mean_ns(group, name):
    est = json.loads((root / group / name / "new" / "estimates.json").read_text())
    return est["mean"]["point_estimate"]
items = 100_000
print(f"{'workload':<8} {'ferry Mitems/s':>15} {'crossbeam':>10} {'std':>10} {'ferry/crossbeam':>16} {'ferry/std':>10}")
for group in ("1p1c", "4p4c"):
    f, c, s = (mean_ns(group, n) for n in ("ferry_joinable", "crossbeam_bounded", "std_sync_channel"))
    rate = lambda ns: items / ns * 1e3
    print(f"{group:<8} {rate(f):>15.2f} {rate(c):>10.2f} {rate(s):>10.2f} {c / f:>16.2f} {s / f:>10.2f}")
PY
